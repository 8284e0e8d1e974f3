"""`python -m mtl train`: meta-train (or pre-train) with ``mtl.engine.train.train``.

The options map one to one onto ``TrainConfig`` fields (``--meta-batch`` -> ``meta_batch``); a
``--preset`` fills them first, options given on the command line win.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtl.algorithms import ALGORITHMS, ALIASES
from mtl.core.checks import STRATEGIES
from mtl.engine import distributed
from mtl.engine.checkpoint import LAST, load_checkpoint
from mtl.engine.config import PRESETS, TrainConfig, preset
from mtl.engine.train import RunSummary, train
from mtl.cli import set_threads
from mtl.errors import ConfigError

_OPTIONS: tuple[tuple[str, type, str], ...] = (
    ("algorithm", str, "the algorithm (every name of mtl.algorithms.ALGORITHMS)"),
    ("dataset", str, "every name of mtl.data.DATASETS"),
    ("ways", int, "N classes per task (default 5, or the algorithm's)"),
    ("shots", int, "K support examples per class (sinusoid: K points)"),
    ("queries", int, "query examples per class"),
    ("meta-batch", int, "tasks per meta-step (default 32, or the algorithm's)"),
    ("inner-steps", int, "inner steps while meta-training (default 1, or the algorithm's)"),
    ("inner-lr", float, "inner step size alpha (default 0.4, or the algorithm's)"),
    ("meta-lr", float, "outer step size beta"),
    ("iterations", int, "meta-steps"),
    ("test-inner-steps", int, "inner steps at validation/test"),
    ("test-ways", int, "ways at validation/test (default: --ways if given, else 5)"),
    ("test-queries", int, "queries per class at validation/test"),
    ("test-shots", int, "shots at validation/test (default: shots)"),
    ("strategy", str, f"{' | '.join(STRATEGIES)}: how tasks are batched (auto: vmap on CUDA, the loop elsewhere)"),
    ("optimizer", str, "adam or sgd"),
    ("lr-schedule", str, "constant, linear, cosine or step"),
    ("lr-step", int, "with --lr-schedule step: halve the meta-lr every this many meta-steps"),
    ("model", str, "conv4, resnet12 or mlp"),
    ("hidden", int, "conv filters / MLP width"),
    ("image-size", int, "image side in pixels"),
    ("channels", int, "image channels of a folder dataset: 1 (grayscale) or 3 (RGB, default)"),
    ("val-every", int, "validate every this many meta-steps"),
    ("val-episodes", int, "size of the fixed validation episode set"),
    ("checkpoint-every", int, "write last.pt every this many meta-steps (default: val-every)"),
    ("log-every", int, "one training metrics row per this many meta-steps"),
    ("eval-batch", int, "tasks per forward pass at validation/test"),
    ("test-episodes", int, "evaluate this many test episodes at the end (0: skip)"),
    ("time-budget", float, "stop after this many seconds of training (checkpoint kept)"),
    ("device", str, "auto, cpu, cuda, cuda:1, ..."),
    ("seed", int, "seed of model init and training episodes"),
    ("init", str, "start from the weights of this checkpoint (e.g. a diverged run's last.pt)"),
)


def _algorithm_help() -> str:
    """Every algorithm name, its aliases and the defaults it sets for options left unset."""
    names = []
    for name in sorted(ALGORITHMS):
        defaults = getattr(ALGORITHMS[name], "DEFAULTS", {})
        note = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in defaults.items())
        names.append(f"{name} (unless set: {note})" if note else name)
    names += [f"{alias} (an alias of {name})" for alias, name in sorted(ALIASES.items())]
    return ", ".join(names)


def _dataset_help() -> str:
    from mtl.data.registry import names

    return ", ".join(names()) + " (folder:PATH: your own images, a folder of class folders)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help=f"start from a named protocol: {', '.join(PRESETS)}")
    for name, kind, help_text in _OPTIONS:
        if name == "algorithm":
            help_text = _algorithm_help()
        elif name == "dataset":
            help_text = _dataset_help()
        parser.add_argument(f"--{name}", type=kind, default=None, help=help_text)
    parser.add_argument("--first-order", action="store_true", default=None, help="drop second-order terms")
    parser.add_argument("--no-rotations", dest="rotations", action="store_false", default=None,
                        help="Omniglot: no 90-degree rotation classes")
    parser.add_argument("--hard-tasks", action="store_true", default=None,
                        help="meta-transfer learning: hard-task meta-batch (sets extra hard_tasks)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra algorithm argument (VALUE parsed as JSON when it can be)")
    parser.add_argument("--out", help="run folder (config.json, last.pt, best.pt, metrics.jsonl/csv)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (also MTL_PROGRESS=0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (1 is fastest for tiny models on a busy machine)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (else the preset, else defaults) with every option given on the command line."""
    if base is None:
        chosen = {"algorithm": args.algorithm} if args.algorithm else {}
        base = preset(args.preset, **chosen) if args.preset else TrainConfig()
    values = base.to_dict()
    for name, _, _ in _OPTIONS:
        key = name.replace("-", "_")
        value = getattr(args, key)
        if value is not None:
            values["time_budget_s" if key == "time_budget" else key] = value
    for key in ("first_order", "rotations"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    extra = dict(values["extra"])
    if args.hard_tasks:
        extra["hard_tasks"] = True
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            extra[key] = json.loads(text)
        except json.JSONDecodeError:
            extra[key] = text
    values["extra"] = extra
    return TrainConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        for name, values in PRESETS.items():
            print(f"{name:28s} {json.dumps(values)}")
        return 0
    if not args.out:
        print("error: --out DIR is required (the run folder)", file=sys.stderr)
        return 2
    set_threads(args.threads)
    out = Path(args.out).expanduser()
    try:
        base = None
        if args.resume and (out / LAST).exists():
            base = TrainConfig.from_dict(load_checkpoint(out / LAST)["config"])
            if args.preset:
                base = config_from_args(args)  # a preset given again must match the run
        config = config_from_args(args, base)
        summary = train(config, out=out, resume=args.resume, overwrite=args.overwrite,
                        progress=False if args.no_progress else None)
        if distributed.is_main_process():  # [distributed]
            _print_summary(summary)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\ninterrupted: {_what_exists(out)}", file=sys.stderr)
        return 130
    finally:
        # [distributed] leave the process group before exit (Gloo's threads must not outlive it)
        distributed.teardown()
    return 0


def _what_exists(out: Path) -> str:
    """What an interrupted run left in ``out``, and what to do next."""
    from mtl.engine.rundir import REPLACED

    kept = (f"; the run that --overwrite replaced is kept in {out / REPLACED}"
            if (out / REPLACED).is_dir() else "")
    if (out / "last.pt").is_file():
        return f"the last checkpoint is {out / 'last.pt'}; continue with --resume{kept}"
    return (f"no checkpoint was written yet, so nothing of this run was kept ({out} is as it was "
            f"before the command): run it again{kept}")


def _print_summary(summary: RunSummary) -> None:
    print(f"{summary.stopped} after {summary.steps} meta-steps, {summary.wall_time_s:.1f} s in the loop; "
          f"run folder {summary.out}")
    for label, row in (("last validation", summary.last_val), ("best validation", summary.best_val)):
        if row:
            metric = "accuracy" if "accuracy" in row else "loss"
            print(f"{label}: {metric} {row[metric]:.4f} +- {row['ci95']:.4f} at step {row['step']}")
    if summary.test:
        print(f"test: {summary.test['mean']:.4f} +- {summary.test['ci95']:.4f} ({summary.test['n']} episodes)")
    print(f"evaluate: python -m mtl evaluate --checkpoint {summary.out}/best.pt --episodes 600 --seed 0")
