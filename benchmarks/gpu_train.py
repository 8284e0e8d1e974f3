"""Train paper presets on a GPU under a time budget, evaluate them, write one JSON of results.

    MTL_DATA=/path/to/data python benchmarks/gpu_train.py --out runs/gpu            # the default table
    python benchmarks/gpu_train.py --out runs/gpu --run maml-omniglot-5w1s:300       # one preset, 300 s
    python benchmarks/gpu_train.py --run cpu-maml-omniglot-5w1s:120:iterations=1500,device=cuda

Each ``--run`` is ``PRESET[:BUDGET_S[:key=value,...]]``: the preset is trained with ``mtl.engine.train.train``
(the engine the CLI uses) for at most ``BUDGET_S`` seconds of loop time (validation included), then
its ``last.pt`` (the model at the end of the budget) and ``best.pt`` (best validation score) are
evaluated on 600 fixed test episodes (seed 0) with ``mtl.engine.evaluate``. ``results.json`` is rewritten
after every run, so a run cut short still leaves the finished ones. Each entry holds the device,
torch version, steps, steps/s, wall time, the first loop time at which the *validation* accuracy
reached the paper's number (an indicator only: validation is not the test set), the test results,
and the exact command to redo it with the CLI.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl.engine.config import preset  # noqa: E402
from mtl.engine.evaluate import evaluate_checkpoint  # noqa: E402
from mtl.engine.train import train  # noqa: E402

#: preset -> the paper's test accuracy (%), from the papers' tables (MAML, Reptile, ProtoNets)
PAPER = {
    "maml-omniglot-5w1s": 98.7, "maml-omniglot-5w5s": 99.9, "maml-omniglot-20w1s": 95.8,
    "maml-omniglot-20w5s": 98.9, "maml-miniimagenet-5w1s": 48.70, "maml-miniimagenet-5w5s": 63.11,
    "fomaml-miniimagenet-5w1s": 48.07, "fomaml-miniimagenet-5w5s": 63.15,
    "reptile-omniglot-5w1s": 97.68, "protonet-miniimagenet-5w1s": 49.42,
    "protonet-miniimagenet-5w5s": 68.20, "cpu-maml-omniglot-5w1s": 95.0,
}
#: what one GPU session runs by default: (preset, budget in seconds)
DEFAULT_RUNS = ["maml-omniglot-5w1s:300", "maml-omniglot-20w1s:900", "maml-miniimagenet-5w1s:1800",
                "maml-miniimagenet-5w5s:1800", "protonet-miniimagenet-5w1s:900",
                "protonet-miniimagenet-5w5s:900", "reptile-omniglot-5w1s:900"]


def parse_run(text: str) -> tuple[str, float | None, dict]:
    name, _, rest = text.partition(":")
    budget_text, _, overrides_text = rest.partition(":")
    overrides = {}
    for item in filter(None, overrides_text.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, float(budget_text) if budget_text else None, overrides


def run_one(spec: str, out: Path, device: str, episodes: int) -> dict:
    name, budget, overrides = parse_run(spec)
    overrides.setdefault("device", device)
    if budget is not None:
        overrides["time_budget_s"] = budget
    config = preset(name, **overrides)
    changed = {k: v for k, v in sorted(overrides.items()) if k not in ("device", "time_budget_s")}
    run_dir = out / "-".join([name, *(f"{k}{v}" for k, v in changed.items())])
    started = time.perf_counter()
    summary = train(config, out=run_dir, overwrite=True, progress=False)
    total = time.perf_counter() - started
    target = PAPER.get(name)
    reached = None
    for row in summary.history:
        if row["kind"] == "val" and target is not None and row.get("accuracy", 0) * 100 >= target:
            reached = row["elapsed_s"]
            break
    tests = {}
    for which in ("last", "best"):
        result = evaluate_checkpoint(run_dir / f"{which}.pt", episodes=episodes, seed=0, progress=False)
        tests[which] = {"mean": result.mean, "ci95": result.ci95, "n": result.n,
                        "inner_steps": result.inner_steps, "step": result.protocol["checkpoint_step"]}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items()
                     if k not in ("time_budget_s",))
    return {
        "preset": name, "overrides": overrides, "paper_accuracy": target,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "torch": torch.__version__, "steps": summary.steps, "stopped": summary.stopped,
        "loop_time_s": summary.wall_time_s, "total_time_s": total,
        "steps_per_s": summary.steps / max(summary.wall_time_s, 1e-9),
        "val_reached_paper_at_s": reached, "best_val": summary.best_val, "test": tests,
        "val_curve": [(r["step"], r["elapsed_s"], r.get("accuracy")) for r in summary.history if r["kind"] == "val"],
        "command": (f"python -m mtl train --preset {name} {flags} --time-budget {budget} --out {run_dir} && "
                    f"python -m mtl evaluate --checkpoint {run_dir}/last.pt --episodes {episodes} --seed 0"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", help="PRESET[:BUDGET_S[:key=value,...]] (repeatable)")
    parser.add_argument("--out", default="runs/gpu", help="run folders and results.json go here")
    parser.add_argument("--json", default=None, help="results file (default OUT/results.json)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = Path(args.json) if args.json else out / "results.json"
    results = []
    for spec in args.run or DEFAULT_RUNS:
        try:
            entry = run_one(spec, out, args.device, args.episodes)
        except Exception as exc:  # record it and go on with the next preset
            entry = {"run": spec, "error": f"{type(exc).__name__}: {exc}"}
        results.append(entry)
        target.write_text(json.dumps(results, indent=2) + "\n")
        test = entry.get("test", {}).get("last")
        print(json.dumps({k: entry.get(k) for k in ("preset", "steps", "loop_time_s", "error")}),
              f"test(last) {100 * test['mean']:.2f} +- {100 * test['ci95']:.2f}" if test else "", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
