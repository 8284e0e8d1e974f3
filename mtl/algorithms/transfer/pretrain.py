"""Pre-training (step 1 of meta-transfer learning): one large classifier over all base classes,
trained by the engine like any algorithm (``--algorithm pretrain``)::

    python -m mtl train --algorithm pretrain --dataset mini-imagenet --meta-batch 128 --meta-lr 0.1 \
        --lr-schedule cosine --iterations 30000 --out runs/pretrain      # ResNet-12, 64 classes
    train(TrainConfig(algorithm="pretrain", ...), out="runs/pretrain")  # the same from Python
    network = mtl.engine.checkpoint.load_pretrained("runs/pretrain")     # what transfer starts from

Every image of every base class is a training example labelled by its class (mini-ImageNet: 64 x
600), visited in epochs: ``EpochBatches`` shuffles all images once per epoch and the engine's
meta-step ``t`` takes batch ``t`` of that order (``config.meta_batch`` images; the incomplete
last batch of an epoch is dropped). Standard augmentation (random crop after zero padding,
horizontal flip for RGB), SGD with Nesterov momentum and weight decay, the engine's learning-rate
schedule (this package's choice is ``cosine``; the MTL authors' PyTorch pre-training instead steps the
rate down at fixed epochs), validation, checkpoints, time budget and exact resume. Inputs stay in
[0, 1], as in every ``TaskBatch``, so the frozen network sees the same images later. Validation
scores few-shot episodes by nearest centroid on the features, after re-estimating batch norm's
running statistics (``recalibrate_batch_norm``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from mtl.algorithms.base import Learner
from mtl.core.heads import prototype_logits
from mtl.errors import CheckpointError, MTLError
from mtl.models.resnet import ResNet12


def augment(x: torch.Tensor, *, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after zero padding and (optionally) horizontal flip, per image, on x's device.

    ``x``: float ``[B, C, H, W]`` -> same shape.
    """
    b, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]   # [B,1,H,1]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]   # [B,1,1,W]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(-1), x)
    return x


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, x: torch.Tensor, *, batches: int, batch_size: int,
                           generator: torch.Generator | None = None, index: torch.Tensor | None = None) -> None:
    """Re-estimate every batch norm's running statistics as the plain average over ``batches``
    random batches of uint8 images ``x`` ``[M, C, H, W]`` (no augmentation); ``index``: the rows
    of ``x`` to draw from (default: all).

    The exponential running average (momentum 0.1) lags behind the weights in short runs, and the
    frozen network of meta-transfer learning relies on these statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches < 1:
        return
    was_training = model.training
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for _ in range(batches):
        idx = torch.randint(0, len(x) if index is None else len(index), (batch_size,), generator=generator)
        idx = (idx if index is None else index[idx]).to(x.device)
        model(x[idx].float().div_(255))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)


def network_from_state(state: dict, *, source: str = "the checkpoint") -> ResNet12:
    """The ResNet-12 that a state dict (``model.state_dict()`` of ``Pretrain``) fits, with it loaded."""
    try:
        channels = [int(state[f"encoder.{i}.conv1.weight"].shape[0]) for i in range(4)]
        in_channels = int(state["encoder.0.conv1.weight"].shape[1])
        num_classes = int(state["classifier.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"{source} holds no ResNet-12 (missing {exc}); pre-train a ResNet-12 "
                              "with `python -m mtl train --algorithm pretrain`") from exc
    model = ResNet12(in_channels, num_classes, tuple(channels))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not fit a ResNet-12 ({str(exc).splitlines()[0][:200]}); "
                              "pre-train again with this mtl version") from exc
    return model


class LabelledBatch(NamedTuple):
    """Plain supervised batch: ``x`` float ``[B, C, H, W]`` in [0, 1] (augmented), ``y`` int64 ``[B]``."""

    x: torch.Tensor
    y: torch.Tensor


class EpochBatches:
    """The training source of pre-training: every image of every class once per epoch, in an order
    shuffled anew each epoch, augmented.

    ``images``: uint8 ``[K, P, C, H, W]`` (``counts`` ``[K]``: the real images of each class when
    classes differ in size; the padding is never drawn). ``sample_step(t, B)`` is the engine's
    meta-step ``t``: batch ``t mod E`` of epoch ``t // E`` (``E = M // B`` batches per epoch over
    ``M`` images); it depends only on ``(seed, t, B)``, so a resumed run draws what an
    uninterrupted one does. ``generator`` (reseeded from those) drives the shuffle and augmentation.
    """

    def __init__(self, images: torch.Tensor, *, counts: torch.Tensor | None = None, pad: int = 0,
                 flip: bool = False, seed: int = 0):
        if images.dtype != torch.uint8 or images.dim() != 5:
            raise MTLError("pre-training needs uint8 images [classes, per_class, C, H, W] (a FewShotDataset); "
                           f"got {images.dtype} {tuple(images.shape)}")
        k, p = images.shape[:2]
        valid = torch.ones(k, p, dtype=torch.bool)
        if counts is not None:
            valid = torch.arange(p)[None, :] < counts.cpu()[:, None]
        self.index = valid.flatten().nonzero().squeeze(1)          # [M] into the flat images
        self.labels = torch.arange(k).repeat_interleave(p)[self.index]
        self.flat = images.flatten(0, 1)                           # [K * P, C, H, W]
        self.num_classes, self.pad, self.flip, self.seed = k, pad, flip, seed
        self.generator = torch.Generator().manual_seed(seed)
        self._order: tuple[int, torch.Tensor] | None = None       # (epoch, its order)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Whole batches of ``batch_size`` in one epoch."""
        if batch_size > len(self.index):
            raise MTLError(f"a batch of {batch_size} images is more than the {len(self.index)} training "
                           "images: lower --meta-batch (the batch size of pre-training)")
        return len(self.index) // batch_size

    def sample_step(self, step: int, batch_size: int) -> LabelledBatch:
        """The batch of meta-step ``step``: ``x`` ``[B, C, H, W]`` in [0, 1], ``y`` ``[B]``."""
        epoch, i = divmod(step, self.steps_per_epoch(batch_size))
        if self._order is None or self._order[0] != epoch:
            self.generator.manual_seed((self.seed * 1_000_003 + epoch) * 2)
            self._order = epoch, torch.randperm(len(self.index), generator=self.generator)
        picks = self._order[1][i * batch_size: (i + 1) * batch_size]
        device = self.flat.device
        x = self.flat[self.index[picks].to(device)].float().div_(255)
        if self.pad or self.flip:
            self.generator.manual_seed((self.seed * 1_000_003 + step) * 2 + 1)
            x = augment(x, pad=self.pad, flip=self.flip, generator=self.generator)
        return LabelledBatch(x, self.labels[picks].to(device))


class Pretrain(Learner):
    """Pre-training as an engine algorithm (``--algorithm pretrain``): checkpoints, resume, metrics.

    ``meta_gradient(LabelledBatch)`` back-propagates the cross-entropy over all base classes;
    ``predict(TaskBatch)`` scores few-shot episodes by nearest centroid on the features (so the
    engine's validation tracks what pre-training is for), after re-estimating batch norm's running
    statistics on ``bn_batches`` training batches (``recalibrate_batch_norm``) if it trained since
    the last time. ``config.meta_batch`` is the batch size, ``config.meta_lr`` the SGD learning
    rate (with the engine's schedule), ``config.iterations`` the number of batches (epochs times
    ``EpochBatches.steps_per_epoch``). Extra settings (``--set key=value``): ``channels`` (list of
    4 widths) or ``hidden`` (first width), ``classes`` (the first N classes of the training split
    only, e.g. a quick CPU run), ``weight_decay`` (5e-4), ``momentum`` (0.9), ``augment`` (true),
    ``bn_batches`` (20), ``bf16``, ``channels_last``. Use the run folder as ``--set pretrained=RUN``
    of the transfer and meta-transfer algorithms.
    """

    def __init__(self, model: ResNet12, *, classes: int | None = None, weight_decay: float = 5e-4,
                 momentum: float = 0.9, augment: bool = True, bn_batches: int = 20, bf16: bool = False,
                 channels_last: bool = False, seed: int = 0):
        super().__init__()
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 2):
            raise MTLError(f"classes must be a whole number >= 2 (the first N classes of the training "
                           f"split), got {classes!r}; drop --set classes to use every class")
        if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
            raise MTLError(f"bn_batches must be a whole number >= 0, got {bn_batches!r} (--set bn_batches=20)")
        self.model = model
        self.classes, self.weight_decay, self.momentum, self.augment = classes, weight_decay, momentum, augment
        self.bn_batches, self.bf16, self.channels_last, self.seed = bn_batches, bf16, channels_last, seed
        self._batches: EpochBatches | None = None
        self._stale_statistics = False  # trained since batch norm's statistics were re-estimated
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    #: ``--set`` keys that ``from_config`` reads (beyond the constructor's keywords)
    CONFIG_SETTINGS = ("channels", "hidden")

    @classmethod
    def from_config(cls, config, build_model) -> "Pretrain":
        """A new ResNet-12 with one output per class of the training split (or per ``classes``)."""
        from mtl.data import load_dataset

        extra = dict(config.extra)
        channels = extra.pop("channels", None)
        hidden = extra.pop("hidden", None)
        dataset = load_dataset(config.dataset, "train", image_size=config.image_size,
                               progress=False, **config.dataset_options(training=True))
        num_classes, _, in_channels = dataset.images.shape[:3]
        classes = extra.get("classes")
        if isinstance(classes, int) and not isinstance(classes, bool) and 2 <= classes:
            if classes > num_classes:
                raise MTLError(f"classes={classes}, but the training split has {num_classes} classes: "
                               f"use at most {num_classes}, or drop --set classes")
            num_classes = classes
        model = ResNet12(in_channels, num_classes, channels, hidden=hidden)
        extra.setdefault("seed", config.seed)
        return cls(model, **extra)

    def configure_optimizer(self, config) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=config.meta_lr, momentum=self.momentum,
                               nesterov=self.momentum > 0, weight_decay=self.weight_decay)

    def attach_sampler(self, sampler) -> EpochBatches:
        """``EpochBatches`` over the images of ``sampler.dataset`` (the training split; its first
        ``classes`` classes if set)."""
        dataset = sampler.dataset
        images, counts = dataset.images, dataset.counts
        if self.classes is not None:
            images, counts = images[: self.classes], None if counts is None else counts[: self.classes]
        if images.shape[0] != self.model.config["num_classes"]:
            raise MTLError(f"the network has {self.model.config['num_classes']} outputs but the training "
                           f"split has {images.shape[0]} classes; pre-train a new network for this split")
        height, channels = images.shape[-2], images.shape[2]
        self._batches = EpochBatches(images, counts=counts, pad=height // 8 if self.augment else 0,
                                     flip=self.augment and channels == 3, seed=self.seed)
        return self._batches

    def meta_gradient(self, batch: LabelledBatch) -> dict[str, float]:
        self.model.train()
        x = batch.x.contiguous(memory_format=torch.channels_last) if self.channels_last else batch.x
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), batch.y)
        loss.backward()
        self._stale_statistics = True
        return {"loss": loss.item(), "accuracy": (logits.argmax(-1) == batch.y).float().mean().item()}

    def per_task_parameters(self, ways: int) -> int:
        """None: validation scores nearest centroid on the features."""
        return 0

    @torch.no_grad()
    def predict(self, batch, *, inner_steps: int | None = None) -> torch.Tensor:
        """Nearest-centroid logits ``[B, N*Q, N]`` of a few-shot ``TaskBatch`` on the features."""
        if self._stale_statistics and self._batches is not None:
            recalibrate_batch_norm(self.model, self._batches.flat, index=self._batches.index,
                                   batches=self.bn_batches, batch_size=128,
                                   generator=torch.Generator().manual_seed(self.seed))
            self._stale_statistics = False
        was_training = self.model.training
        self.model.eval()
        support = F.normalize(self.model.features(batch.support_x.flatten(0, 1)), dim=-1)
        query = F.normalize(self.model.features(batch.query_x.flatten(0, 1)), dim=-1)
        self.model.train(was_training)
        support, query = support.unflatten(0, batch.support_x.shape[:2]), query.unflatten(0, batch.query_x.shape[:2])
        return prototype_logits(support, batch.support_y, query, int(batch.support_y.max()) + 1)
