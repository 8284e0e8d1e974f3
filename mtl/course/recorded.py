"""What the lessons read instead of training: the recorded CPU comparison and the pre-trained backbone.

**The recorded comparison** (``bash benchmarks/cpu_comparison.sh``): eight methods, one budget,
one results file each under ``results/`` (test scores on 600 episodes, validation curve, provenance),
the tested weights under ``results/checkpoints/`` for those that keep any, and further training seeds
of some under ``results/seeds/``::

    run("MAML")                        # compare.Row of results/cpu-maml.json (training seed 0)
    run("MAML", seed=1)                # results/seeds/cpu-maml-seed1.json
    model("MAML")                      # the tested learner, from results/checkpoints/cpu-maml.pt
    by_seed(["MAML", "ProtoNet"])      # {seed: {method: Row}} for every seed recorded for all of them

**The pre-trained backbone** of lessons 07-09: the three lessons pre-train the same ResNet-12 with
the same settings and seed. It takes minutes on a CPU, so the repository keeps one copy,
``results/checkpoints/cpu-pretrain-resnet12.pt`` (weights only), beside
``results/pretrained/cpu-resnet12.json`` (the command, machine, date, wall time and per-epoch
metrics of the run that made it)::

    config = pretrain_config("omniglot", classes=150, channels=(16, 32, 64, 128), epochs=4, batch_size=64)
    net = pretrained(config)                      # the recorded run when its config is this one
    net.backbone, net.history, net.wall_time_s, net.recorded
    net = pretrained(config, recompute=True)      # train it here (cached under MTL_CACHE)

``python benchmarks/cpu_pretrain.py`` makes the two files again.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mtl.course.compare import RESULTS, Row, load_results
from mtl.engine.config import TrainConfig
from mtl.errors import ResultsError

__all__ = ["METHODS", "run", "model", "by_seed", "Pretrained", "pretrained", "pretrain_config", "WEIGHTS", "RECORD"]

#: the recorded comparison's methods, in lesson 09's order, and the stem of their files
#: (``cpu-<stem>.json``; ``benchmarks/cpu_comparison.sh <stem>`` records one)
METHODS = {"MAML": "maml", "first-order MAML": "fomaml", "Reptile": "reptile", "ANIL": "anil",
           "Meta-SGD": "metasgd", "ProtoNet": "protonet", "Proto-MAML": "protomaml", "in-context": "in-context"}


def _stem(method: str) -> str:
    if method not in METHODS:
        raise ResultsError(f"no recorded run of {method!r}: the recorded methods are {', '.join(METHODS)}")
    return METHODS[method]


def _path(method: str, seed: int) -> Path:
    stem = _stem(method)
    return RESULTS / f"cpu-{stem}.json" if seed == 0 else RESULTS / "seeds" / f"cpu-{stem}-seed{seed}.json"


def run(method: str, seed: int = 0) -> Row:
    """The recorded run of ``method`` (a key of `METHODS`) trained with ``seed``: its row, with
    the 600 per-episode test ``scores``, the validation ``curve``, ``test_steps`` and ``provenance``."""
    path = _path(method, seed)
    command = f"{f'SEED={seed} ' if seed else ''}bash benchmarks/cpu_comparison.sh {METHODS[method]}"
    if not path.is_file():
        raise ResultsError(f"{path} is missing: record it with `{command}` (about 20 minutes on one thread)")
    (row,) = load_results(path.parent, path.name)
    if row.method != method:
        raise ResultsError(f"{path} holds a run of {row.method!r}, not {method!r}: record it again with `{command}`")
    return row


def model(method: str, device: str = "cpu"):
    """The learner ``run(method)`` was tested with (training seed 0), as `mtl.engine.build.Loaded`:
    ``.learner`` (eval mode), ``.config``, ``.step``."""
    from mtl.engine.build import load_learner

    path = RESULTS / "checkpoints" / f"cpu-{_stem(method)}.pt"
    if not path.is_file():
        raise ResultsError(f"{path} is missing: no weights of {method!r} are recorded: `bash "
                           f"benchmarks/cpu_comparison.sh {METHODS[method]}` records its run with them")
    return load_learner(path, device)


def by_seed(methods) -> dict[int, dict[str, Row]]:
    """``{seed: {method: Row}}``, seeds in order, for every training seed recorded for all ``methods``
    (seed 0 under ``results/``, the others under ``results/seeds/``)."""
    methods = list(methods)
    recorded = [{0} | {int(m.group(1)) for p in (RESULTS / "seeds").glob(f"cpu-{_stem(method)}-seed*.json")
                       if (m := re.fullmatch(rf"cpu-{re.escape(_stem(method))}-seed(\d+)\.json", p.name))}
                for method in methods]
    seeds = set.intersection(*recorded) if recorded else {0}
    return {seed: {method: run(method, seed) for method in methods} for seed in sorted(seeds)}

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
