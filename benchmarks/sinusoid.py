"""One MAML meta-step on sinusoid regression (MLP 1-40-40-1, 25 tasks of 10 points, one inner step
of 0.01: MAML section 5.1) under ``strategy="loop"`` and ``"vmap"``, timed in interleaved rounds.

    python benchmarks/sinusoid.py [--rounds 7] [--steps 20]

For a network this small the per-task loop's overhead (a backward, ``functional_call`` and the
inner ``autograd.grad`` per task) is most of the step, and ``vmap`` batches it away even on a CPU:
why the ``cpu-maml-sinusoid`` preset sets ``strategy="vmap"``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mtl.data import SinusoidTasks
from mtl.engine.build import build_learner
from mtl.engine.config import preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="meta-steps per round and strategy")
    args = parser.parse_args()
    batch = SinusoidTasks(shots=10, queries=10, seed=0).sample(25)
    learners = {}
    for strategy in ("loop", "vmap"):
        torch.manual_seed(0)
        learners[strategy] = build_learner(preset("cpu-maml-sinusoid", strategy=strategy).resolved(),
                                           torch.device("cpu"))
        learners[strategy].meta_gradient(batch)  # warm-up
    times = {s: [] for s in learners}
    for _ in range(args.rounds):
        for strategy, learner in learners.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                learner.zero_grad()
                learner.meta_gradient(batch)
            times[strategy].append((time.perf_counter() - start) / args.steps)
    ratio = statistics.median(lo / v for lo, v in zip(times["loop"], times["vmap"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s): " + ", ".join(
        f"{s} {1000 * statistics.median(t):.1f} ms" for s, t in times.items())
        + f"; loop / vmap by round: {ratio:.1f}x")


if __name__ == "__main__":
    main()
