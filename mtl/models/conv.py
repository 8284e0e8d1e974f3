"""The networks of the course, written to be used with ``torch.func.functional_call``.

Every model here keeps all of its state in ``named_parameters()``: no buffers, no running
statistics. That is what lets the inner loop treat a model as a pure function
``f(params, x)`` and adapt a copy of ``params`` per task (``mtl.adapt``).

- ``Conv4``: the 4-block network of MAML / ProtoNets (64 filters on Omniglot, 32 on mini-ImageNet).
- ``MLP``: 1-40-40-1 ReLU network for sinusoid regression (MAML section 5.1).

Batch norm, everywhere: **always normalised with the statistics of the batch it is given**, in
training and in evaluation alike, with no running statistics. This is transductive (the query
set of a task is normalised with its own statistics), exactly as in MAML's code; it also means a
task's prediction for one query image depends on the other query images of that task.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl.core.norms import batch_norm
from mtl.errors import ConfigError

__all__ = ["Conv4", "MLP", "BatchNorm", "conv_block"]


class BatchNorm(nn.Module):
    """Batch norm over the current batch's statistics, then a learned per-channel scale and shift.

    ``[n, C, ...] -> [n, C, ...]``; the same numbers as ``nn.BatchNorm2d(C,
    track_running_stats=False)`` and the same parameter names (``weight``, ``bias``), through
    ``mtl.core.norms.batch_norm``: torch's fused kernel on plain tensors, and under a ``torch.func``
    transform (``vmap``) the normalisation without affine and the scale and shift written out,
    because there the fused affine kernel's second derivative comes out wrong (see ``mtl.core.norms``).
    Standard ``nn.BatchNorm2d`` layers get the same treatment from ``mtl.core.norms.exact_norms``.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)


def conv_block(in_channels: int, out_channels: int, *, pool: bool = True,
               norm: str = "batch") -> nn.Sequential:
    """3x3 conv -> norm -> ReLU -> 2x2 max-pool.

    ``norm="batch"``: batch norm over the current batch's statistics; ``norm="layer"``: each image
    normalised over its own channels and pixels (``nn.GroupNorm(1, C)``), so an image's features do
    not depend on the other images of the batch.
    """
    if norm not in ("batch", "layer"):
        raise ConfigError(f"norm must be 'batch' or 'layer', got {norm!r}")
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        BatchNorm(out_channels) if norm == "batch" else nn.GroupNorm(1, out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv blocks and a linear head: ``[n, C, H, W] -> [n, num_classes]``.

    Args:
        in_channels: 1 for Omniglot, 3 for mini-ImageNet.
        num_classes: N of an N-way task (the head's outputs).
        hidden: filters per block; 64 for Omniglot, 32 for mini-ImageNet (MAML).
        image_size: side of the (square) input, 28 for Omniglot, 84 for mini-ImageNet; fixes the
            head's input size (``hidden * (image_size // 16) ** 2``, 64 on Omniglot, 800 on
            mini-ImageNet).
        norm: ``"batch"`` (default) or ``"layer"`` (per image, see ``conv_block``).

    Batch norm uses the current batch's statistics, always (no running statistics, transductive
    as in MAML). The body is ``self.features`` and the head ``self.head`` (ANIL adapts only the
    head, whose parameter names start with ``"head."``).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 5, hidden: int = 64,
                 image_size: int = 28, norm: str = "batch") -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_channels, hidden, norm=norm),
            conv_block(hidden, hidden, norm=norm),
            conv_block(hidden, hidden, norm=norm),
            conv_block(hidden, hidden, norm=norm),
            nn.Flatten(),
        )
        side = image_size
        for _ in range(4):
            side //= 2
        self.head = nn.Linear(hidden * max(side, 1) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """``[n, in_features] -> [n, out_features]``: Linear-ReLU-Linear-ReLU-Linear (1-40-40-1 default).

    The body is ``self.features`` and the head ``self.head`` (names start with ``"head."``).
    """

    def __init__(self, in_features: int = 1, out_features: int = 1, hidden: int = 40,
                 depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

