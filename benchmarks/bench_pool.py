"""mtl.core.kernels' max-pool path against torch's kernel, per input size (what MIN_ELEMENTS rests on).

For each shape, a ReLU'd random input pooled 2x2: forward + backward ("first order"), and forward +
backward with a graph + the backward of that ("double backward", what second-order MAML's inner
steps do), timed over 30 calls after 3 untimed ones; prints torch's ms over the path's ms (above 1
the path is faster). Run with the thread count to measure, e.g.::

    python benchmarks/bench_pool.py
    OMP_NUM_THREADS=1 python benchmarks/bench_pool.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from mtl.core.kernels import max_pool2d

SHAPES = [(5, 64, 3, 3), (75, 64, 3, 3), (5, 64, 7, 7), (5, 64, 14, 14), (5, 32, 21, 21),
          (75, 64, 7, 7), (20, 64, 14, 14), (5, 64, 28, 28), (5, 32, 42, 42), (25, 32, 21, 21),
          (75, 64, 14, 14)]


def seconds(pool, x: torch.Tensor, double: bool, calls: int = 30) -> float:
    """Mean seconds of one forward + backward (+ double backward) of ``pool`` on ``x``."""
    x = x.clone().requires_grad_()

    def once() -> None:
        y = pool(x)
        grad_y = torch.ones_like(y).requires_grad_(double)
        (grad_x,) = torch.autograd.grad(y, x, grad_y, create_graph=double)
        if double:
            torch.autograd.grad((grad_x * grad_x).sum(), grad_y)

    for _ in range(3):
        once()
    start = time.perf_counter()
    for _ in range(calls):
        once()
    return (time.perf_counter() - start) / calls


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); torch ms / path ms")
    torchs = lambda t: F.max_pool2d(t, 2)  # noqa: E731
    ours = lambda t: max_pool2d(t, 2)  # noqa: E731
    for shape in SHAPES:
        x = torch.randn(*shape).relu()
        first = seconds(torchs, x, False) / seconds(ours, x, False)
        double = seconds(torchs, x, True) / seconds(ours, x, True)
        print(f"{str(shape):18s} {x.numel():8d} elements  first order {first:.2f}x  "
              f"double backward {double:.2f}x")


if __name__ == "__main__":
    main()
