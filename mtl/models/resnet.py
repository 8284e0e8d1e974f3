"""ResNet-12, the backbone of meta-transfer learning (Sun et al. 2019) and MetaOptNet (Lee et al. 2019).

Four residual blocks; each is three 3x3 convolutions (batch norm, LeakyReLU 0.1) with a 1x1
convolution + batch norm on the shortcut, then a 2x2 max-pool. Global average pooling gives the
feature vector ``[B, channels[-1]]``; a linear ``classifier`` maps it to logits.

``channels`` sets the four block widths, a tuple or one of the named configurations of ``WIDTHS``:

- ``"metaoptnet"`` ``(64, 160, 320, 640)``: MetaOptNet (Lee et al. 2019), the common "ResNet-12"
  of the few-shot literature, and the default here;
- ``"mtl-tensorflow"`` ``(64, 128, 256, 512)``: the MTL paper's TensorFlow release (the same four
  blocks of three 3x3 convolutions with a 1x1 shortcut; it scales and shifts the three convolutions
  of each block and leaves the shortcut as pre-trained).

The MTL PyTorch release is not a ResNet-12: it is a ResNet-25 (a 3x3 stem of 80 filters, then three
stages of four basic blocks of widths 160-320-640) and scales every convolution, shifting only those
with a bias. It is not built here. A narrow ``(16, 40, 80, 160)`` (``hidden=16``) trains on two CPU
cores in the course's CPU profile.

Batch norm is ordinary batch norm with running statistics (unlike ``mtl.models``, whose batch norm
always uses the current batch): the network is pre-trained as a plain classifier, and then *frozen*
in ``eval`` mode, so that its features do not depend on which images share a batch. This is also
what makes Scaling & Shifting meaningful: with batch statistics, a per-channel scale or shift of a
convolution that feeds batch norm would be normalised away.

The module holds no state that ``torch.func.functional_call`` cannot replace: every convolution
has ``bias=None`` registered, so a functional call may supply ``"<conv>.bias"`` (Scaling & Shifting
does exactly that).
"""
from __future__ import annotations

import torch
from torch import nn

#: Named block widths, by source (see the module docstring).
WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "metaoptnet": (64, 160, 320, 640),
    "mtl-tensorflow": (64, 128, 256, 512),
}
#: The widths used by MetaOptNet and most ResNet-12 few-shot papers.
DEFAULT_CHANNELS = WIDTHS["metaoptnet"]


def widths_for(hidden: int) -> tuple[int, int, int, int]:
    """MetaOptNet's width ratios 1 : 2.5 : 5 : 10 from the first block's width."""
    return (hidden, round(2.5 * hidden), 5 * hidden, 10 * hidden)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """Three conv-BN-LeakyReLU layers + 1x1 shortcut, then 2x2 max-pool: ``[B,Cin,H,W] -> [B,Cout,H/2,W/2]``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = _conv3x3(out_channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.relu(out + self.shortcut_bn(self.shortcut_conv(x)))
        return self.pool(out)


class ResNet12(nn.Module):
    """ResNet-12 classifier.

    Args:
        in_channels: image channels (3 for mini-ImageNet, 1 for Omniglot).
        num_classes: outputs of ``classifier`` (64 base classes of mini-ImageNet); 0 for none.
        channels: the four block widths, or a name in ``WIDTHS`` (default ``"metaoptnet"``,
            ``(64, 160, 320, 640)``).
        hidden: instead of ``channels``, the first width; the others follow MetaOptNet's ratios
            (``widths_for(hidden)``: 16 -> ``(16, 40, 80, 160)``).
        image_size: ignored (accepted so ResNet12 is built like ``Conv4``).

    ``forward(x)``: ``[B, C, H, W]`` float -> logits ``[B, num_classes]``.
    ``features(x)``: ``[B, C, H, W]`` -> ``[B, feature_dim]`` (average-pooled last block).
    ``encoder`` is the part before the classifier, a module of its own so that
    ``functional_call(model.encoder, params, (x,))`` gives features.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 64,
                 channels: tuple[int, ...] | str | None = None, *, hidden: int | None = None,
                 image_size: int | None = None):
        super().__init__()
        del image_size  # global average pooling: any input size works (accepted like Conv4's)
        if isinstance(channels, str):
            if channels not in WIDTHS:
                raise ValueError(f"unknown ResNet-12 widths {channels!r}; choose one of "
                                 f"{', '.join(WIDTHS)} or give four numbers")
            channels = WIDTHS[channels]
        if channels is None:
            channels = DEFAULT_CHANNELS if hidden is None else widths_for(hidden)
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"ResNet12 needs four positive block widths, got channels={channels}")
        self.config = {"arch": "resnet12", "in_channels": int(in_channels),
                       "num_classes": int(num_classes), "channels": list(channels)}
        widths = (in_channels,) + channels
        self.encoder = nn.Sequential(
            *[ResidualBlock(widths[i], widths[i + 1]) for i in range(4)],
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = channels[-1]
        self.classifier = nn.Linear(self.feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, feature_dim]``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))
