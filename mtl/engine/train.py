"""The meta-training engine: one loop for every algorithm, with validation, checkpoints and metrics.

Python (what lessons call; the CLI calls the same function)::

    from mtl.engine.train import train
    summary = train("cpu-maml-omniglot-5w1s", out="runs/maml")   # a preset name, dict or TrainConfig
    summary.learner, summary.best_val, summary.history

CLI: ``python -m mtl train --preset maml-omniglot-5w1s --out runs/maml [--resume | --overwrite]``.

Each meta-step: ``optimizer.zero_grad()``, draw ``meta_batch`` tasks (``mtl.engine.distributed.TaskStream``:
the meta-batch of step ``t`` is drawn from one seed of ``(seed, t)``, the same whatever the number of
processes, and under torchrun each rank keeps its share), ``learner.meta_gradient(batch)`` (fills
``.grad``; averaged over ranks), a check for NaN/Inf and exploding losses, ``optimizer.step()``. Every
``val_every`` steps the learner is scored on a fixed, seeded validation episode set; every
``checkpoint_every`` steps ``last.pt`` is written atomically (``best.pt`` on a new best validation
score; both by ``mtl.engine.checkpoint``, which owns the files and their format).
``metrics.jsonl`` and ``metrics.csv`` grow as the run goes; ``config.json`` holds the resolved
config. ``--resume`` restores model, optimizer, step, metric counters and every RNG state (torch,
CUDA, Python, NumPy, the episode sampler's generator), so a run killed at any moment ends with the
same metrics as an uninterrupted one (given the same device and thread count). Pre-training
(``--algorithm pretrain``) runs through this same loop: its task source is a batch of
``meta_batch`` labelled images per step, in epochs over a shuffled order
(``mtl.algorithms.transfer.pretrain.EpochBatches``).

Plugging in an algorithm (the engine never knows which one runs)
-----------------------------------------------------------------
Subclass ``mtl.algorithms.Learner`` and register it (``mtl.algorithms.register_algorithm(name,
cls)``, or an entry of ``mtl.algorithms.registry.ALGORITHMS``). The engine calls only the
contract's hooks, each with a default in ``Learner``: ``cls.from_config(config, build_model)``
(default: ``cls(build_model(), inner_steps=, inner_lr=, first_order=, strategy=, **config.extra)``;
``--set key=value`` and ``--hard-tasks`` fill ``config.extra``), ``learner.attach_sampler(sampler)``,
``learner.configure_optimizer(config)``, ``learner.meta_gradient(batch)`` and
``learner.predict(batch, inner_steps=)`` (what validation and evaluation score).

Randomness: every ``torch.Generator`` held as an attribute of the sampler or of any sub-module of
the learner is checkpointed and restored (so is the global torch/NumPy/Python RNG); keep private
randomness in such a generator and resume stays exact.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtl.engine import distributed
from mtl.engine.build import build_learner, resolve_device
from mtl.engine.rundir import RunFolderError, finish, prepare_run_dir, release, undo_start  # noqa: F401
from mtl.engine.checkpoint import (BEST, LAST, RESUMABLE, load_checkpoint, load_learner_state, payload, restore_rng,
                                   write_checkpoint)
from mtl.engine.config import ConfigError, TrainConfig, preset
from mtl.errors import InnerLoopError, MTLError, TrainingDiverged
from mtl.io import atomic_write_text, progress_enabled

#: config fields that may change when a run is resumed
RESUMABLE_CHANGES = ("iterations", "device", "time_budget_s", "test_episodes")
_CSV_COLUMNS = ("kind", "step", "loss", "accuracy", "ci95", "lr", "elapsed_s")

@dataclass
class RunSummary:
    """What `train` returns (and writes as ``summary.json``)."""

    config: TrainConfig
    out: str | None
    steps: int
    stopped: str                       # "completed" | "time budget"
    wall_time_s: float                 # time in the training loop, all sessions of a resumed run
    last_val: dict[str, Any] | None
    best_val: dict[str, Any] | None
    test: dict[str, Any] | None
    history: list[dict[str, Any]] = field(repr=False)
    learner: nn.Module | None = field(default=None, repr=False, compare=False)
    threads: int = field(default_factory=torch.get_num_threads)  # torch's CPU threads while training

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "out": self.out, "steps": self.steps,
                "stopped": self.stopped, "wall_time_s": self.wall_time_s, "threads": self.threads,
                "last_val": self.last_val, "best_val": self.best_val, "test": self.test}


# --- the training source and the learning rate -----------------------------------------------
def train_sampler(config: TrainConfig, learner: nn.Module, device: torch.device) -> Any:
    """The training task source: episodes of the train split (or the algorithm's own sampler)."""
    from mtl.engine.build import task_source

    sampler = task_source(config, "train", ways=config.ways, shots=config.shots, queries=config.queries,
                          device=device, seed=config.seed, training=True)
    return learner.attach_sampler(sampler)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The outer step size for meta-step ``step`` (0-based)."""
    if config.lr_schedule == "linear":
        return config.meta_lr * (1 - step / config.iterations)
    if config.lr_schedule == "step":
        return config.meta_lr * 0.5 ** (step // config.lr_step)
    if config.lr_schedule == "cosine":
        return config.meta_lr * 0.5 * (1 + math.cos(math.pi * step / config.iterations))
    return config.meta_lr


# --- the loop ------------------------------------------------------------------------------------
def train(config: TrainConfig | dict | str, *, out: str | os.PathLike | None = None,
          resume: bool = False, overwrite: bool = False, progress: bool | None = None) -> RunSummary:
    """Meta-train per ``config`` (a `TrainConfig`, a dict of its fields, or a preset name).

    ``out``: the run folder (None: nothing is written, for lessons). An existing run folder is
    continued only with ``resume=True`` and replaced only with ``overwrite=True``.
    Raises `RunFolderError`, `CheckpointError` (before any training), `TrainingDiverged`.
    """
    config = _as_config(config)
    if not resume:  # validate, then act: nothing is created, moved or deleted for a bad config
        resolve_device(config.resolved().device)
    info = distributed.setup()  # [distributed] join torchrun's process group (no-op otherwise)
    run_dir, aside, created = (prepare_run_dir(out, resume=resume, overwrite=overwrite)
                               if info.rank == 0 else
                               (Path(out) if out is not None else None, None, False))
    try:
        summary = _train(config, info, run_dir, resume, progress)
    except BaseException as error:
        if info.rank == 0 and run_dir is not None:
            note = undo_start(run_dir, aside, created)
            if note and isinstance(error, MTLError):
                error.args = (f"{error} {note}",)
            elif note:
                print(note, file=sys.stderr)
        raise
    finally:
        if info.rank == 0:
            release(run_dir)
    if info.rank == 0 and run_dir is not None:
        finish(run_dir, aside)  # the new run has finished: the run it replaced may go
    return summary


def _train(config: TrainConfig, info, run_dir: Path | None, resume: bool,
           progress: bool | None) -> RunSummary:
    distributed.barrier()  # [distributed]
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(run_dir / LAST, required=RESUMABLE)
        config = _resume_config(TrainConfig.from_dict(checkpoint["config"]), config)
    config = config.resolved()
    if checkpoint is None:
        config = config.with_folder_classes()  # the split is recorded, whatever the folder becomes
    device = info.device if info.world_size > 1 else resolve_device(config.device)  # [distributed]
    show = progress_enabled(progress) and info.rank == 0  # [distributed]

    _seed_everything(config.seed)
    learner = build_learner(config, device)
    optimizer = learner.configure_optimizer(config)
    sampler = train_sampler(config, learner, device)
    from mtl.engine.evaluate import EpisodeSet

    val_set = EpisodeSet(config, "val", n=config.val_episodes, seed=config.eval_seed, device=device,
                         progress=show)
    val_set.check()
    test_set = None
    if config.test_episodes > 0 and not config.spec.sizes_known:
        # a test split whose size the config could not check (a folder's) is checked now, not
        # after training
        test_set = EpisodeSet(config, "test", n=config.test_episodes, seed=config.eval_seed,
                              device=device, progress=show)
        test_set.check()
    state = _State()
    if checkpoint is None and config.init is not None:
        start = load_checkpoint(config.init)
        load_learner_state(learner, start["learner"], config.init)
    if checkpoint is not None:
        load_learner_state(learner, checkpoint["learner"], run_dir / LAST)
        optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng(checkpoint["rng"], sampler, learner)
        state = _State(**checkpoint["state"])
    run_dir = run_dir if info.rank == 0 else None  # [distributed] only rank 0 writes
    log = _MetricsLog(run_dir, keep_until=state.step if checkpoint is not None else None)
    if run_dir is not None:
        atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    loop = _Loop(config, learner, optimizer, sampler, val_set, state, log, run_dir, show)
    stopped = loop.run()

    test = None
    if config.test_episodes > 0:
        from mtl.engine.evaluate import evaluate

        test = evaluate(learner, config, split="test", episodes=config.test_episodes,
                        seed=config.eval_seed, device=device, episode_set=test_set,
                        progress=show).to_dict()
    summary = RunSummary(config=config, out=str(run_dir) if run_dir else None, steps=state.step,
                         stopped=stopped, wall_time_s=state.elapsed_s, last_val=state.last_val,
                         best_val=state.best_val, test=test, history=log.rows, learner=learner)
    if run_dir is not None:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


@dataclass
class _State:
    """The engine's counters; checkpointed as plain values."""

    step: int = 0
    elapsed_s: float = 0.0
    window_loss: float = 0.0
    window_accuracy: float = 0.0
    window_count: int = 0
    best_score: float | None = None
    best_val: dict[str, Any] | None = None
    last_val: dict[str, Any] | None = None
    first_loss: float | None = None    # the first meta-step's loss: the scale of an explosion


#: a training loss this many times the first meta-step's is taken as divergence
EXPLODED = 1e4


class _Loop:
    def __init__(self, config, learner, optimizer, sampler, val_set, state, log, run_dir, progress):
        self.config, self.learner, self.optimizer, self.sampler = config, learner, optimizer, sampler
        self.val_set, self.state, self.log, self.run_dir, self.progress = val_set, state, log, run_dir, progress
        self.params = [p for p in learner.parameters() if p.requires_grad]
        self.stream = distributed.TaskStream(sampler, seed=config.seed)  # [distributed]
        self.last_good = state.step if run_dir is not None and state.step > 0 else None

    def run(self) -> str:
        from tqdm.auto import tqdm

        c, s = self.config, self.state
        bar = tqdm(total=c.iterations, initial=s.step, disable=not self.progress, dynamic_ncols=True,
                   desc=f"{c.algorithm} {c.dataset}")
        started = time.perf_counter() - s.elapsed_s
        stopped = "completed"
        self.learner.train()
        try:
            while s.step < c.iterations:
                # [distributed] stop together: any rank past the budget stops them all
                if c.time_budget_s is not None and distributed.any_rank(s.elapsed_s >= c.time_budget_s):
                    stopped = "time budget"
                    break
                loss, accuracy, lr = self._meta_step()
                s.step += 1
                s.window_loss, s.window_accuracy = s.window_loss + loss, s.window_accuracy + accuracy
                s.window_count += 1
                s.elapsed_s = time.perf_counter() - started
                bar.update(1)
                if s.step % c.log_every == 0 or s.step == c.iterations:
                    row = self._train_row(lr)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", acc=_fmt(row["accuracy"]), refresh=False)
                if s.step % c.val_every == 0 or s.step == c.iterations:
                    self._validate()
                    bar.set_postfix(val=_fmt(s.last_val.get("accuracy", s.last_val.get("loss"))), refresh=False)
                s.elapsed_s = time.perf_counter() - started
                if s.step % c.checkpoint_every == 0 or s.step == c.iterations:
                    self._save(LAST)
            if stopped == "time budget" and self.last_good != s.step:
                if s.last_val is None or s.last_val["step"] != s.step:
                    self._validate()
                s.elapsed_s = time.perf_counter() - started
                self._save(LAST)
        finally:
            bar.close()
        return stopped

    def _meta_step(self) -> tuple[float, float, float]:
        c, s = self.config, self.state
        lr = learning_rate(c, s.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        try:  # [distributed] this rank's share of the step's tasks, gradients averaged over ranks
            metrics = distributed.meta_gradient(self.learner, self.stream, s.step, c.meta_batch)
        except InnerLoopError as exc:
            raise TrainingDiverged(self._diverged_message(f"the inner loop diverged ({exc})")) from exc
        loss = float(metrics["loss"])
        accuracy = float(metrics.get("accuracy", float("nan")))
        if not math.isfinite(loss) or not _grads_finite(self.params):
            what = f"meta-loss {loss}" if not math.isfinite(loss) else "a NaN/Inf meta-gradient"
            raise TrainingDiverged(self._diverged_message(what))
        chance = math.log(max(c.ways, 2))  # cross-entropy of a uniform guess
        if not c.regression and loss > 100 * chance:
            raise TrainingDiverged(self._diverged_message(
                f"the meta-loss is {loss:.3g}, over 100 times a uniform guess's {chance:.2f}"))
        if s.first_loss is None:
            s.first_loss = loss
        elif loss > EXPLODED * max(s.first_loss, 1e-3):
            raise TrainingDiverged(self._diverged_message(
                f"the meta-loss exploded to {loss:.3g} ({EXPLODED:.0e} times the first step's "
                f"{s.first_loss:.3g})"))
        self.optimizer.step()
        return loss, accuracy, lr

    def _diverged_message(self, what: str) -> str:
        step = self.state.step + 1
        lower = (f"a lower learning rate (--inner-lr below {self.config.inner_lr:g} or --meta-lr "
                 f"below {self.config.meta_lr:g})")
        best = self.state.best_val
        if self.last_good is not None and best is not None:
            kept = (f"The last checkpoint (step {self.last_good}) is kept in {self.run_dir / 'last.pt'}, "
                    f"and the weights of the best validation (step {best['step']}) in "
                    f"{self.run_dir / 'best.pt'}: start a new run from those with --init "
                    f"{self.run_dir / 'best.pt'} --out NEW_FOLDER and {lower}")
        elif self.last_good is not None:
            kept = (f"The last checkpoint (step {self.last_good}) is kept in {self.run_dir / 'last.pt'}, "
                    f"but no validation has scored it yet, so its weights may already be bad: run "
                    f"again with {lower}")
        else:
            kept = (f"No checkpoint was written yet (the run folder is left as it was): run the "
                    f"same command again with {lower}")
        return f"training stopped at meta-step {step}: {what}. {kept}."

    def _train_row(self, lr: float) -> dict[str, Any]:
        s = self.state
        count = max(s.window_count, 1)
        accuracy = s.window_accuracy / count
        row = {"kind": "train", "step": s.step, "loss": s.window_loss / count,
               "accuracy": None if math.isnan(accuracy) else accuracy, "lr": lr,
               "elapsed_s": round(s.elapsed_s, 3)}
        s.window_loss, s.window_accuracy, s.window_count = 0.0, 0.0, 0
        self.log.write(row)
        return row

    def _validate(self) -> None:
        from mtl.engine.evaluate import evaluate

        s = self.state
        result = evaluate(self.learner, self.config, episode_set=self.val_set, progress=False)
        if not math.isfinite(result.mean):
            raise TrainingDiverged(self._diverged_message(f"the validation {result.metric} is "
                                                          f"{result.mean}"))
        key = "accuracy" if result.metric == "accuracy" else "loss"
        row = {"kind": "val", "step": s.step, key: result.mean, "ci95": result.ci95,
               "elapsed_s": round(s.elapsed_s, 3)}
        self.log.write(row)
        s.last_val = row
        score = result.mean if key == "accuracy" else -result.mean
        if s.best_score is None or score > s.best_score:
            s.best_score, s.best_val = score, row
            self._save(BEST)

    def _save(self, name: str) -> None:
        if self.run_dir is None:
            return
        write_checkpoint(self.run_dir, name, payload(self.config, self.state.step, self.learner,
                                                     self.optimizer, self.sampler, self.state.__dict__))
        if name == LAST:
            self.last_good = self.state.step


def _grads_finite(params: list[torch.Tensor]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([g.detach().float().norm() for g in grads]).sum()))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class _MetricsLog:
    """``metrics.jsonl`` + ``metrics.csv``, appended row by row (flushed), kept in ``rows``."""

    def __init__(self, run_dir: Path | None, keep_until: int | None):
        self.run_dir, self.rows = run_dir, []
        if run_dir is None:
            return
        jsonl = run_dir / "metrics.jsonl"
        if keep_until is not None and jsonl.exists():
            # A resumed run drops what was logged after its checkpoint, then logs it again.
            for line in jsonl.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill
                    continue
                if row["step"] <= keep_until:
                    self.rows.append(row)
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        with open(run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, _CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.run_dir / "metrics.csv", "a", newline="") as f:
            csv.DictWriter(f, _CSV_COLUMNS, extrasaction="ignore").writerow(row)


# --- config and seeds ---------------------------------------------------------------------------
def _as_config(config: TrainConfig | dict | str) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    raise ConfigError(f"config must be a TrainConfig, a dict or a preset name, got {type(config).__name__}")


def _resume_config(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The saved config, with only the fields that may change on resume taken from ``given``."""
    saved_values, given_values = saved.to_dict(), given.resolved().to_dict()
    resolved_saved = saved.resolved().to_dict()
    changed = [k for k in saved_values if k not in RESUMABLE_CHANGES and k != "preset"
               and given_values[k] != resolved_saved[k]]
    if changed:
        diffs = "; ".join(f"{k}: run has {resolved_saved[k]!r}, given {given_values[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume with different settings ({diffs}). Resume with the run's settings "
            f"(only {', '.join(RESUMABLE_CHANGES)} may change), or start a new run in another folder."
        )
    for k in RESUMABLE_CHANGES:
        saved_values[k] = given_values[k]
    return TrainConfig.from_dict(saved_values)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
