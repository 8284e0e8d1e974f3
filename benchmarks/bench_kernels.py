"""What mtl.core.kernels saves: one meta-step of a strategy with the kernels on and off.

The same strategy, model and random tasks as ``python -m mtl bench`` (a Conv4 of standard layers),
timed round-robin with ``mtl.core.kernels.enabled(True)`` and ``enabled(False)``; the median of
each is reported and their ratio (above 1: the kernels are faster).

    OMP_NUM_THREADS=1 python benchmarks/bench_kernels.py --configs omniglot-5w1s-b8-s1 \
        --strategies loop loop+task_backward --rounds 5 [--json F]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import mtl
from mtl.cli import bench
from mtl.core import kernels
from mtl.core.inner import STRATEGIES


def _time(config: str, order: str, strategies: list[str], rounds: int) -> list[dict]:
    """One row per strategy: its median meta-step with the kernels on and off, round-robin."""
    model, tasks, lr, _ = bench._setup(config, torch.device("cpu"), None)
    steps = bench.CONFIGS[config][7]
    params = dict(model.named_parameters())
    times: dict[tuple[str, bool], list[float]] = {(s, on): [] for s in strategies for on in (True, False)}
    for round_ in range(rounds + 1):  # round 0 warms up (and lets nothing be timed cold)
        for strategy, on in times:
            model.zero_grad(set_to_none=True)
            with kernels.enabled(on):
                start = time.perf_counter()
                mtl.maml_loss(model, params, *tasks, steps=steps, lr=lr,
                              first_order=order == "first", strategy=strategy).backward()
                seconds = time.perf_counter() - start
            if round_:
                times[strategy, on].append(seconds)
    rows = []
    for strategy in strategies:
        on, off = (statistics.median(times[strategy, flag]) * 1000 for flag in (True, False))
        rows.append({"config": config, "order": order, "strategy": strategy,
                     "kernels_ms": round(on, 1), "plain_ms": round(off, 1),
                     "plain_over_kernels": round(off / on, 3),
                     "kernels_all_ms": [round(1000 * t, 1) for t in times[strategy, True]],
                     "plain_all_ms": [round(1000 * t, 1) for t in times[strategy, False]]})
        print(f"{config:26s} {order:6s} {strategy:22s} kernels {on:8.0f} ms  plain {off:8.0f} ms"
              f"  {off / on:.2f}x", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=list(bench.CONFIGS),
                        default=["omniglot-5w1s-b8-s1", "omniglot-5w1s-b8-s5"])
    parser.add_argument("--orders", nargs="+", choices=["second", "first"],
                        default=["second", "first"])
    parser.add_argument("--strategies", nargs="+", choices=[s for s in STRATEGIES if s != "vmap"],
                        default=["loop", "loop+task_backward"])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = [row for config in args.configs for order in args.orders
            for row in _time(config, order, args.strategies, args.rounds)]
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds,
                "date": time.strftime("%Y-%m-%d")}
        with open(args.json, "w") as f:
            json.dump({"machine": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
