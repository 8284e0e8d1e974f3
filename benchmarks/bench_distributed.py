"""Distributed benchmark: CPU scaling with W Gloo processes, single-GPU step times, paper projection.

    python benchmarks/bench_distributed.py cpu --worlds 1 2          # strong scaling, same meta-batch
    python benchmarks/bench_distributed.py gpu                       # one GPU: steps at B, B/8, B/16
    python benchmarks/bench_distributed.py paper                     # all-reduce bytes per meta-step

Synthetic images of the real shapes (throughput does not depend on pixel values), so it needs no
data files. ``cpu`` spawns W processes on loopback exactly as torchrun would (env vars, Gloo, one
torch thread each) and times meta-steps of MAML (second order) with the meta-batch split W ways.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import time
from pathlib import Path

import torch

from mtl.engine import distributed as D
from mtl.data import EpisodeSampler, FewShotDataset
from mtl.models import Conv4

#: name -> (channels, image side, hidden, ways, shots, queries, inner steps, inner lr, meta-batch)
SETTINGS = {
    "omniglot-5w1s": (1, 28, 64, 5, 1, 15, 1, 0.4, 32),
    "miniimagenet-5w1s": (3, 84, 32, 5, 1, 15, 5, 0.01, 4),
}


def _learner(name: str, device: str):
    from mtl.algorithms import ALGORITHMS

    channels, side, hidden, ways, shots, queries, steps, lr, batch = SETTINGS[name]
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 20, channels, side, side), dtype=torch.uint8)
    dataset = FewShotDataset(images, [str(i) for i in range(64)], "synthetic", "train")
    model = Conv4(channels, ways, hidden=hidden, image_size=side)
    strategy = "vmap" if device.startswith("cuda") else "loop"
    learner = ALGORITHMS["maml"](model, inner_steps=steps, inner_lr=lr, strategy=strategy).to(device)
    sampler = EpisodeSampler(dataset, ways=ways, shots=shots, queries=queries, device=device, seed=0)
    return learner, D.TaskStream(sampler, seed=0), batch


def _time_steps(learner, stream, batch_size: int, steps: int, warmup: int, device: str) -> list[float]:
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    times = []
    for step in range(warmup + steps):
        D.barrier()
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        D.meta_gradient(learner, stream, step, batch_size)
        optimizer.step()
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _time_all_reduce(learner, reps: int) -> float:
    for p in learner.parameters():
        p.grad = torch.ones_like(p)
    D.barrier()
    start = time.perf_counter()
    for _ in range(reps):
        D.all_reduce_gradients(learner)
    return (time.perf_counter() - start) / reps


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- cpu: W processes

def _cpu_worker(rank: int, world: int, port: int, name: str, batch: int | None, steps: int,
                out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    D.setup(backend="gloo", timeout_s=600)
    learner, stream, default_batch = _learner(name, "cpu")
    batch = batch or default_batch
    times = _time_steps(learner, stream, batch, steps, warmup=2, device="cpu")
    reduce_s = _time_all_reduce(learner, 20) if world > 1 else 0.0
    if D.is_main_process():
        Path(out).write_text(json.dumps({"times": times, "all_reduce_s": reduce_s, "batch": batch}))
    D.teardown()


def bench_cpu(name: str, worlds: list[int], batch: int | None, steps: int) -> list[dict]:
    rows = []
    for world in worlds:
        out = Path(f"/tmp/bench_distributed_{os.getpid()}_{world}.json")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        procs = [context.Process(target=_cpu_worker, args=(r, world, port, name, batch, steps, str(out)))
                 for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        result = json.loads(out.read_text())
        out.unlink()
        step_s = statistics.median(result["times"])
        rows.append({"world": world, "setting": name, "meta_batch": result["batch"], "step_s": step_s,
                     "tasks_per_s": result["batch"] / step_s, "all_reduce_ms": 1e3 * result["all_reduce_s"]})
    base = rows[0]["step_s"] * rows[0]["world"]
    for row in rows:
        row["speedup"] = rows[0]["step_s"] / row["step_s"]
        row["efficiency"] = base / (row["step_s"] * row["world"])
    return rows


# ----------------------------------------------------------------------------- gpu: one card

def bench_gpu(steps: int) -> list[dict]:
    rows = []
    for name in SETTINGS:
        learner, stream, batch = _learner(name, "cuda")
        for per_gpu in sorted({batch, max(batch // 8, 1), max(batch // 16, 1)}, reverse=True):
            torch.cuda.reset_peak_memory_stats()
            step_s = statistics.median(_time_steps(learner, stream, per_gpu, steps, warmup=3, device="cuda"))
            rows.append({"setting": name, "tasks_on_gpu": per_gpu, "step_ms": 1e3 * step_s,
                         "tasks_per_s": per_gpu / step_s,
                         "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                         "device": torch.cuda.get_device_name()})
    rows.append(pretrain_step(128, steps, "cuda"))
    return rows


def pretrain_step(batch: int, steps: int, device: str) -> dict:
    """Time a data-parallel pre-training step of ResNet-12 (fp32, 84x84, 64 classes), one device."""
    from mtl.models.resnet import ResNet12

    torch.manual_seed(0)
    model = ResNet12(3, 64).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.rand(batch, 3, 84, 84, device=device)
    y = torch.randint(0, 64, (batch,), device=device)
    times = []
    for step in range(3 + steps):
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        D.all_reduce_gradients(model)
        optimizer.step()
        _sync(device)
        if step >= 3:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {"setting": "resnet12-pretrain-fp32", "images_on_gpu": batch, "step_ms": 1e3 * step_s,
            "images_per_s": batch / step_s,
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}


# ----------------------------------------------------------------------------- paper projection

def bench_paper() -> list[dict]:
    """Bytes each GPU sends per meta-step in a ring all-reduce of the fp32 meta-gradient."""
    from mtl.models.resnet import ResNet12

    models = {"conv4-omniglot (64 filters, 5-way)": Conv4(1, 5, hidden=64, image_size=28),
              "conv4-miniimagenet (32 filters, 5-way)": Conv4(3, 5, hidden=32, image_size=84),
              "resnet12 (64-160-320-640, 64-way pretrain head)": ResNet12(3, 64)}
    rows = []
    for label, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        size = 4 * params
        for gpus in (8, 16):
            rows.append({"model": label, "params": params, "gradient_bytes": size, "gpus": gpus,
                         "ring_bytes_per_gpu": 2 * (gpus - 1) / gpus * size})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("cpu", "gpu", "paper"))
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--setting", choices=list(SETTINGS), default="omniglot-5w1s")
    parser.add_argument("--meta-batch", type=int, default=None, help="cpu: tasks per step (default: setting's)")
    parser.add_argument("--steps", type=int, default=10, help="timed meta-steps (after warm-up)")
    args = parser.parse_args()
    if args.mode == "cpu":
        rows = bench_cpu(args.setting, args.worlds, args.meta_batch, args.steps)
    elif args.mode == "gpu":
        rows = bench_gpu(args.steps)
    else:
        rows = bench_paper()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
