"""The pre-trained backbone of lessons 07-09, recorded once: its weights and its training record.

The three lessons pre-train the same ResNet-12 with the same settings and seed. It takes minutes on
a CPU, so the repository keeps one copy, ``results/checkpoints/cpu-pretrain-resnet12.pt`` (weights
only), beside ``results/pretrained/cpu-resnet12.json`` (the command, machine, date, wall time and
per-epoch metrics of the run that made it)::

    config = pretrain_config("omniglot", classes=150, channels=(16, 32, 64, 128), epochs=4, batch_size=64)
    run = pretrained(config)                      # the recorded run when its config is this one
    run.backbone, run.history, run.wall_time_s, run.recorded
    run = pretrained(config, recompute=True)      # train it here (cached under MTL_CACHE)

``python benchmarks/cpu_pretrain.py`` makes the two files again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mtl.course.compare import RESULTS
from mtl.engine.config import TrainConfig
from mtl.errors import ResultsError

__all__ = ["Pretrained", "pretrained", "pretrain_config", "WEIGHTS", "RECORD"]

WEIGHTS = RESULTS / "checkpoints" / "cpu-pretrain-resnet12.pt"
RECORD = RESULTS / "pretrained" / "cpu-resnet12.json"


@dataclass
class Pretrained:
    """A pre-trained ``backbone`` (eval mode) and its run: ``history`` holds the engine's metric rows
    (``{"kind": "train" | "val", "step", "loss", "accuracy", ...}``), ``wall_time_s`` the time the
    run took when it trained (validation included); ``recorded`` says whether it was read from
    ``results/`` (with its ``provenance``) or trained in this process (or read back from its cache)."""

    backbone: nn.Module
    history: list[dict[str, Any]]
    wall_time_s: float
    recorded: bool
    provenance: dict[str, Any] = field(default_factory=dict)


def pretrain_config(dataset: str, *, classes: int | None, channels: tuple[int, ...], epochs: int, batch_size: int,
                    augment: bool = False, device: str = "cpu", seed: int = 0) -> TrainConfig:
    """Pre-training of a ResNet-12 of these ``channels`` on the training split's first ``classes``
    classes (None: all): SGD 0.1 with a cosine schedule over ``epochs`` epochs of ``batch_size``
    images, one training row and one validation (nearest centroid, 50 episodes) per epoch."""
    from mtl.algorithms.transfer.pretrain import EpochBatches
    from mtl.data import load_dataset

    images = load_dataset(dataset, "train", progress=False).images
    steps_per_epoch = EpochBatches(images[:classes] if classes else images).steps_per_epoch(batch_size)
    return TrainConfig(algorithm="pretrain", dataset=dataset, rotations=False, device=device, seed=seed,
                       meta_batch=batch_size, meta_lr=0.1, lr_schedule="cosine", iterations=epochs * steps_per_epoch,
                       log_every=steps_per_epoch, val_every=steps_per_epoch, val_episodes=50,
                       extra=dict(classes=classes, channels=list(channels), augment=augment))


def _same(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs train the same network (the device aside)."""
    skip = {"device", "preset"}
    da, db = a.resolved().to_dict(), b.resolved().to_dict()
    return {k: v for k, v in da.items() if k not in skip} == {k: v for k, v in db.items() if k not in skip}


def pretrained(config: TrainConfig, *, recompute: bool = False, run_dir: str | Path | None = None) -> Pretrained:
    """The network ``config`` (algorithm ``pretrain``) trains: read from ``results/`` when the
    recorded run used exactly this config and ``recompute`` is False, otherwise trained with
    `mtl.engine.train.train` into ``run_dir`` (default: the data cache's ``lessons/`` folder; a
    complete run there is read back, an interrupted one continued)."""
    from mtl.engine.build import load_learner

    if config.algorithm != "pretrain":
        raise ResultsError(f"pretrained() trains algorithm 'pretrain', not {config.algorithm!r}")
    if not recompute and WEIGHTS.is_file() and RECORD.is_file():
        loaded = load_learner(WEIGHTS, config.device)
        if _same(loaded.config, config):
            record = json.loads(RECORD.read_text())
            return Pretrained(loaded.learner.model.eval(), record["history"], record["wall_time_s"], True,
                              record["provenance"])
    from mtl.data.cache import cache_dir
    from mtl.engine.train import train

    c = config.resolved()
    key = hashlib.sha256(json.dumps(c.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    run_dir = Path(run_dir) if run_dir is not None else cache_dir() / "lessons" / f"pretrain-{c.dataset}-{key}"
    result = train(config, out=run_dir, resume=(run_dir / "last.pt").is_file(), progress=False)
    return Pretrained(result.learner.model.eval(), result.history, result.wall_time_s, False)
