"""What exact batch norm costs under vmap: Conv4 of nn.BatchNorm2d vs Conv4 of mtl.models.BatchNorm.

Both networks compute the same function (batch statistics, affine). Under ``strategy="vmap"`` the
standard layers are rerouted through ``mtl.core.norms`` (fused kernel without affine, affine written
out) exactly as ``mtl.models.BatchNorm`` computes itself, so the ratio should be ~1. Rounds
alternate between the two models (interleaved), and the median per model is reported.

    python benchmarks/bench_norms.py [--device cpu|cuda] [--rounds 9] [--meta-batch 8] [--json F]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

import mtl
from mtl.models import Conv4


def standard_conv4(hidden: int, ways: int) -> nn.Module:
    """Conv4 with the same layout and parameter names as mtl.models.Conv4, of standard layers."""
    model = Conv4(1, ways, hidden=hidden)
    for block in model.features[:4]:
        block[1] = nn.BatchNorm2d(hidden, track_running_stats=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    ways, queries = 5, 15
    g = torch.Generator().manual_seed(0)
    b = args.meta_batch
    sx = torch.rand(b, ways, 1, 28, 28, generator=g).to(device)
    qx = torch.rand(b, ways * queries, 1, 28, 28, generator=g).to(device)
    sy = torch.arange(ways).repeat(b, 1).to(device)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(b, 1).to(device)
    torch.manual_seed(0)
    models = {"mtl.models.BatchNorm": Conv4(1, ways, hidden=args.hidden).to(device)}
    standard = standard_conv4(args.hidden, ways).to(device)
    standard.load_state_dict(models["mtl.models.BatchNorm"].state_dict())
    models["nn.BatchNorm2d"] = standard

    def step(model: nn.Module) -> float:
        params = dict(model.named_parameters())
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = mtl.maml_loss(model, params, sx, sy, qx, qy, steps=args.steps, lr=0.4,
                             strategy="vmap")
        torch.autograd.grad(loss, list(params.values()))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        step(model)  # warm-up
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(step(model))
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median["nn.BatchNorm2d"] / median["mtl.models.BatchNorm"]
    result = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "meta_batch": b, "inner_steps": args.steps, "hidden": args.hidden,
              "rounds": args.rounds, "median_ms": {k: 1000 * v for k, v in median.items()},
              "ratio_standard_over_mtl": ratio}
    for name, value in median.items():
        print(f"{name:<22} {1000 * value:9.1f} ms per second-order meta-step (vmap)")
    print(f"nn.BatchNorm2d / mtl.models.BatchNorm = {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
