"""Pre-training (step 1 of meta-transfer learning): one large classifier over all base classes.

    result = pretrain(load_dataset("mini-imagenet", "train"), epochs=100)   # ResNet-12, 64 classes
    model = load_pretrained("runs/pretrain/pretrain.pt", num_classes=64)

Every image of every base class is a training example labelled by its class (mini-ImageNet: 64 x 600).
Standard augmentation (random crop after zero padding, horizontal flip for RGB), SGD with Nesterov
momentum and weight decay, a cosine learning-rate schedule stepped every batch, a checkpoint after
every epoch (atomic write; ``resume=True`` continues from it), a tqdm bar, and optional bf16 autocast
and channels-last memory format (GPU speed-ups). Inputs stay in [0, 1], as in every ``TaskBatch``,
so the frozen network sees the same images later. ``holdout`` images per class are kept out of
training and classified after each epoch (a quick over-fitting check).

One pre-training step, two drivers: ``pretrain`` (a dataset in memory, epochs over a shuffled
order; what lessons call) and the engine's ``--algorithm pretrain`` (``Pretrain``, batches drawn
with replacement) both step through ``Pretrain.meta_gradient``, and both write the one checkpoint
format of ``mtl.io`` (``weights_only=True``): ``{"config": {"algorithm": "pretrain", ...},
"learner": {"model.<name>": tensor}, ...}``; ``pretrain``'s files add ``"network"`` (the
``ResNet12.config``), ``"optimizer"``, ``"scheduler"``, ``"epoch"`` and ``"history"``. Files of the
earlier ``"mtl-pretrain-1"`` format still load.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mtl.algorithms.base import Learner
from mtl.io import checkpoint_path, load_checkpoint, progress_enabled, save_checkpoint
from mtl.errors import CheckpointError, MTLError
from mtl.core.heads import prototype_logits
from mtl.models.resnet import DEFAULT_CHANNELS, ResNet12

#: the format of pre-training checkpoints written before they shared ``mtl.io``'s (still read)
LEGACY_FORMAT = "mtl-pretrain-1"


@dataclass
class PretrainResult:
    """The trained network (eval mode) and one dict of metrics per epoch."""

    model: ResNet12
    history: list[dict] = field(default_factory=list)


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


def _split(images: torch.Tensor, holdout: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``images`` uint8 ``[K, P, C, H, W]`` -> train x/y and held-out x/y (flattened, labels = class index)."""
    k, p = images.shape[:2]
    if not 0 <= holdout < p:
        raise MTLError(f"holdout={holdout} must be between 0 and {p - 1} (images per class); lower it")
    labels = torch.arange(k, device=images.device)[:, None].expand(k, p)
    train_x, test_x = images[:, : p - holdout], images[:, p - holdout:]
    train_y, test_y = labels[:, : p - holdout], labels[:, p - holdout:]
    return train_x.flatten(0, 1), train_y.flatten(), test_x.flatten(0, 1), test_y.flatten()


@torch.no_grad()
def classify_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512,
                      bf16: bool = False) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images ``x`` ``[M, C, H, W]`` with labels ``y`` ``[M]``."""
    if len(x) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i: i + batch_size].float().div_(255)
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=bf16):
            correct += (model(xb).argmax(-1) == y[i: i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(x)


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, x: torch.Tensor, *, batches: int, batch_size: int,
                           generator: torch.Generator | None = None) -> None:
    """Re-estimate every batch norm's running statistics as the plain average over ``batches``
    random batches of uint8 images ``x`` ``[M, C, H, W]`` (no augmentation).

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
        idx = torch.randint(0, len(x), (batch_size,), generator=generator).to(x.device)
        model(x[idx].float().div_(255))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)


def _read_checkpoint(path: str | Path) -> dict:
    """A pre-training checkpoint (file or run folder) as ``{"network": ResNet12 config, "state_dict",
    ...}``: one written by ``pretrain``, by ``python -m mtl train --algorithm pretrain``, or a legacy file."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"no pre-training checkpoint at {path}: run `python -m mtl train --algorithm "
                              "pretrain` (or mtl.algorithms.transfer.pretrain.pretrain) first, or fix the path")
    try:
        payload = load_checkpoint(path, required=("config", "learner"))
    except CheckpointError as exc:
        legacy = _read_legacy(path)
        if legacy is None:
            raise CheckpointError(f"{exc} For pre-training: pass the checkpoint of `python -m mtl train "
                                  "--algorithm pretrain` or of pretrain(), or pre-train again.") from exc
        return legacy
    if payload["config"].get("algorithm") != "pretrain":
        raise CheckpointError(f"{path} is a {payload['config'].get('algorithm')!r} run, not a pre-training "
                              "run; pass the checkpoint of `python -m mtl train --algorithm pretrain`")
    state = {k[len("model."):]: v for k, v in payload["learner"].items() if k.startswith("model.")}
    return {**payload, "network": payload.get("network") or config_from_state(state), "state_dict": state}


def _read_legacy(path: Path) -> dict | None:
    """A ``"mtl-pretrain-1"`` file (``"config"`` was the network's) in today's layout, else None."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - load_checkpoint has already named what is wrong
        return None
    if not (isinstance(payload, dict) and payload.get("format") == LEGACY_FORMAT):
        return None
    return {**payload, "network": payload["config"], "config": {"algorithm": "pretrain"}}


def config_from_state(state: dict) -> dict:
    """The ``ResNet12.config`` that a state dict fits, read off its weight shapes."""
    try:
        channels = [int(state[f"encoder.{i}.conv1.weight"].shape[0]) for i in range(4)]
        in_channels = int(state["encoder.0.conv1.weight"].shape[1])
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint holds no ResNet-12 (missing {exc}); pre-train a ResNet-12 "
                              "with mtl.algorithms.transfer.pretrain") from exc
    classes = state.get("classifier.weight")
    return {"arch": "resnet12", "in_channels": in_channels,
            "num_classes": int(classes.shape[0]) if classes is not None else 0, "channels": channels}


def check_config(config: dict, *, source: str = "checkpoint", **expected) -> None:
    """Raise ``CheckpointError`` if a saved ResNet config differs from ``expected`` (None = any)."""
    if config.get("arch") != "resnet12":
        raise CheckpointError(f"{source} holds a {config.get('arch')!r} network, not resnet12; "
                              "pre-train a ResNet-12 or pass a matching checkpoint")
    for key, want in expected.items():
        if want is None:
            continue
        have = config.get(key)
        if key == "channels":
            want, have = list(want), list(have or [])
        if have != want:
            raise CheckpointError(f"{source} was pre-trained with {key}={have}, but {want} was asked for; "
                                  f"use {key}={have}, or pre-train again with {key}={want}")


def load_pretrained(path: str | Path, *, num_classes: int | None = None, channels=None,
                    in_channels: int | None = None, map_location: str | torch.device = "cpu") -> ResNet12:
    """The pre-trained ResNet-12 of a checkpoint (eval mode), checked against what is asked for.

    ``path``: a checkpoint of ``pretrain`` or an engine run (folder or ``.pt``) of ``--algorithm pretrain``.
    """
    payload = _read_checkpoint(path)
    config = payload["network"]
    check_config(config, source=str(path), num_classes=num_classes, channels=channels, in_channels=in_channels)
    model = ResNet12(config["in_channels"], config["num_classes"], tuple(config["channels"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit a ResNet-12 ({str(exc).splitlines()[0][:200]}); "
                              "pre-train again with this mtl version") from exc
    return model.to(map_location).eval()


def pretrain(dataset, *, model: ResNet12 | None = None, channels=DEFAULT_CHANNELS, epochs: int = 100,
             batch_size: int = 128, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
             augment_images: bool = True, pad: int | None = None, flip: bool | None = None, holdout: int = 0,
             device: str | torch.device | None = None, bf16: bool = False, channels_last: bool = False,
             checkpoint: str | Path | None = None, resume: bool = False, seed: int = 0,
             max_steps_per_epoch: int | None = None, time_budget_s: float | None = None,
             bn_batches: int = 20, on_epoch=None, progress: bool = True) -> PretrainResult:
    """Train a ResNet-12 classifier over every class of ``dataset``.

    Args:
        dataset: a ``FewShotDataset`` (or anything with ``.images`` uint8 ``[K, P, C, H, W]``).
        model: a ``ResNet12`` with ``K`` outputs to train (default: a new one with ``channels``).
        epochs, batch_size, lr, momentum, weight_decay: SGD (Nesterov), cosine schedule over all steps.
        pad, flip: augmentation (default pad = H // 8, flip for RGB only); ``augment_images=False`` disables both.
        holdout: images per class kept out of training and classified after every epoch.
        bf16, channels_last: autocast to bfloat16 / channels-last memory format (mostly GPU speed-ups).
        checkpoint: file written after every epoch; ``resume=True`` continues from it if it exists.
        max_steps_per_epoch: cut epochs short (CPU profile, smoke tests).
        time_budget_s: stop after the epoch during which this much wall time has passed.
        bn_batches: after every epoch, batch norm's running statistics are re-estimated on this
            many batches (``recalibrate_batch_norm``; 0: keep the running average).
        on_epoch: called with each epoch's metrics dict (e.g. to write partial JSON).
    Returns:
        ``PretrainResult(model (eval mode), history)``; each history entry has ``epoch``, ``loss``,
        ``train_accuracy``, ``holdout_accuracy``, ``lr``, ``images_per_s``, ``seconds``.
    """
    images = dataset.images if hasattr(dataset, "images") else dataset
    counts = getattr(dataset, "counts", None)
    if counts is not None and int(counts.min()) < images.shape[1]:
        warnings.warn(f"classes hold {int(counts.min())} to {int(counts.max())} images; pre-training "
                      f"uses the first {int(counts.min())} of each (every class the same count)",
                      stacklevel=2)
        images = images[:, : int(counts.min())]
    if images.dtype != torch.uint8 or images.dim() != 5:
        raise MTLError("pretrain needs uint8 images [classes, per_class, C, H, W] (a FewShotDataset); "
                       f"got {images.dtype} {tuple(images.shape)}")
    device = torch.device(device) if device is not None else images.device
    num_classes, _, in_channels, height, _ = images.shape
    if model is None:
        model = ResNet12(in_channels, num_classes, channels)
    check_config(model.config, source="the model", num_classes=num_classes, in_channels=in_channels)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_x, train_y, test_x, test_y = _split(images.to(device), holdout)
    pad = (height // 8 if pad is None else pad) if augment_images else 0
    flip = (in_channels == 3 if flip is None else flip) and augment_images

    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                                weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    history: list[dict] = []
    start_epoch = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is not None and path.is_file():
        payload = _read_checkpoint(path)
        check_config(payload["network"], source=str(path), **{k: v for k, v in model.config.items() if k != "arch"})
        model.load_state_dict(payload["state_dict"])
        if "scheduler" not in payload:
            raise CheckpointError(f"{path} holds weights only (an engine run of --algorithm pretrain); resume it "
                                  "with `python -m mtl train --resume`, or start from it: model=load_pretrained(PATH)")
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        start_epoch, history = payload["epoch"], list(payload["history"])

    generator = torch.Generator().manual_seed(seed)
    learner = Pretrain(model, bf16=bf16, channels_last=channels_last)  # the one pre-training step
    started = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        generator.manual_seed(seed * 100_003 + epoch)  # the same epoch after a resume
        order = torch.randperm(len(train_x), generator=generator).to(device)
        loss_sum, correct, seen = 0.0, 0.0, 0
        epoch_start = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"pretrain {epoch + 1}/{epochs}", leave=False,
                   disable=not progress_enabled(progress))
        for step in bar:
            idx = order[step * batch_size: (step + 1) * batch_size]
            x = train_x[idx].float().div_(255)
            y = train_y[idx]
            if pad or flip:
                x = augment(x, pad=pad, flip=flip, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            step_metrics = learner.meta_gradient(LabelledBatch(x, y))
            optimizer.step()
            scheduler.step()
            loss_sum += step_metrics["loss"] * len(y)
            correct += step_metrics["accuracy"] * len(y)
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - epoch_start
        recalibrate_batch_norm(model, train_x, batches=bn_batches, batch_size=batch_size, generator=generator)
        metrics = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                   "holdout_accuracy": classify_accuracy(model, test_x, test_y, bf16=bf16),
                   "lr": scheduler.get_last_lr()[0], "images_per_s": seen / seconds, "seconds": seconds}
        history.append(metrics)
        if path is not None:
            save_checkpoint(path, {"config": {"algorithm": "pretrain"}, "network": model.config,
                                   "step": (epoch + 1) * steps_per_epoch,
                                   "learner": {f"model.{k}": v for k, v in model.state_dict().items()},
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "epoch": epoch + 1, "history": history})
        if on_epoch is not None:
            on_epoch(metrics)
        if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
            break
    model = model.to(memory_format=torch.contiguous_format)
    return PretrainResult(model.eval(), history)


# --- the same pre-training through the engine: `python -m mtl train --algorithm pretrain` ----------
class LabelledBatch(NamedTuple):
    """Plain supervised batch: ``x`` float ``[B, C, H, W]`` in [0, 1] (augmented), ``y`` int64 ``[B]``."""

    x: torch.Tensor
    y: torch.Tensor


class LabelledBatches:
    """The engine's training source for pre-training: augmented random images of every class.

    ``sample(batch_size)`` draws (class, image) pairs uniformly with replacement from ``images``
    uint8 ``[K, P, C, H, W]``; ``generator`` is checkpointed by the engine (exact resume).
    """

    def __init__(self, images: torch.Tensor, *, pad: int, flip: bool, seed: int = 0):
        self.images, self.pad, self.flip = images, pad, flip
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> LabelledBatch:
        k, p = self.images.shape[:2]
        classes = torch.randint(0, k, (batch_size,), generator=self.generator)
        picks = torch.randint(0, p, (batch_size,), generator=self.generator)
        device = self.images.device
        x = self.images[classes.to(device), picks.to(device)].float().div_(255)
        if self.pad or self.flip:
            x = augment(x, pad=self.pad, flip=self.flip, generator=self.generator)
        return LabelledBatch(x, classes.to(device))


class Pretrain(Learner):
    """Pre-training as an engine algorithm (``--algorithm pretrain``): checkpoints, resume, metrics.

    ``meta_gradient(LabelledBatch)`` back-propagates the cross-entropy over all base classes;
    ``predict(TaskBatch)`` scores few-shot episodes by nearest centroid on the features (so the
    engine's validation tracks what pre-training is for), after re-estimating batch norm's running
    statistics on 20 training batches (``recalibrate_batch_norm``) if it trained since the last
    time. ``config.meta_batch`` is the batch size, ``config.meta_lr`` the SGD learning rate (with
    the engine's schedule), ``config.iterations`` the number of batches. Extra settings
    (``--set key=value``): ``channels`` (list of 4 widths) or ``hidden`` (first width),
    ``weight_decay`` (5e-4), ``momentum`` (0.9), ``augment`` (true), ``bf16``, ``channels_last``.
    Use the run folder as ``--set pretrained=RUN`` of ``--algorithm mtl``.
    """

    def __init__(self, model: ResNet12, *, inner_steps: int = 0, inner_lr: float = 0.0,
                 first_order: bool = False, strategy: str = "auto", weight_decay: float = 5e-4,
                 momentum: float = 0.9, augment: bool = True, bf16: bool = False,
                 channels_last: bool = False, seed: int = 0, **_unused):
        super().__init__()
        self.model = model
        self.weight_decay, self.momentum, self.augment = weight_decay, momentum, augment
        self.bf16, self.channels_last, self.seed = bf16, channels_last, seed
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    #: ``--set`` keys that ``from_config`` reads (beyond the constructor's keywords)
    CONFIG_SETTINGS = ("channels", "hidden")

    @classmethod
    def from_config(cls, config, build_model) -> "Pretrain":
        """A new ResNet-12 with one output per class of the training split (``build_model`` unused)."""
        from mtl.data import load_dataset

        extra = dict(config.extra)
        channels = extra.pop("channels", None)
        hidden = extra.pop("hidden", None)
        dataset = load_dataset(config.dataset, "train", image_size=config.image_size,
                               progress=False, **config.dataset_options(training=True))
        num_classes, _, in_channels = dataset.images.shape[:3]
        model = ResNet12(in_channels, num_classes, channels, hidden=hidden)
        return cls(model, seed=config.seed, **extra)

    def configure_optimizer(self, config) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=config.meta_lr, momentum=self.momentum,
                               nesterov=self.momentum > 0, weight_decay=self.weight_decay)

    def attach_sampler(self, sampler) -> LabelledBatches:
        images = sampler.images
        if images.shape[0] != self.model.config["num_classes"]:
            raise CheckpointError(f"the network has {self.model.config['num_classes']} outputs but the training "
                                  f"split has {images.shape[0]} classes; pre-train a new network for this split")
        height, channels = images.shape[-2], images.shape[2]
        self._batches = LabelledBatches(images, pad=height // 8 if self.augment else 0,
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
        batches = getattr(self, "_batches", None)
        if getattr(self, "_stale_statistics", False) and batches is not None:
            recalibrate_batch_norm(self.model, batches.images.flatten(0, 1), batches=20, batch_size=128,
                                   generator=torch.Generator().manual_seed(self.seed))
            self._stale_statistics = False
        was_training = self.model.training
        self.model.eval()
        support = F.normalize(self.model.features(batch.support_x.flatten(0, 1)), dim=-1)
        query = F.normalize(self.model.features(batch.query_x.flatten(0, 1)), dim=-1)
        self.model.train(was_training)
        support, query = support.unflatten(0, batch.support_x.shape[:2]), query.unflatten(0, batch.query_x.shape[:2])
        return prototype_logits(support, batch.support_y, query, int(batch.support_y.max()) + 1)
