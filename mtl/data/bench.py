"""Data benchmarks: cache build (cold), cache load (warm), episodes sampled per second.

Used by ``benchmarks/bench_data.py``.
Each function returns plain dicts (JSON-ready); :func:`bench_data` runs them all and :func:`markdown`
formats the result.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mtl.data import EpisodeSampler, dataset_spec, load_dataset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cold_build(name: str, *, root=None, splits=None, progress: bool = False) -> dict:
    """Seconds to build a dataset's cache (``splits``, for a dataset cached split by split; default
    all) into a fresh temporary folder (its spec's ``prepare``)."""
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as tmp:
        start = time.perf_counter()
        dataset_spec(name).prepare(splits, root=root, cache_dir=tmp, download=False, progress=progress)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.pt"))
    return {"what": f"cold build {name} ({'+'.join(splits or ('all',))})", "seconds": round(seconds, 2),
            "cache_mb": round(size / 2**20, 1)}


def time_warm_load(name: str, *, root=None, cache_dir=None, splits=None) -> dict:
    """Seconds for ``load_dataset`` of ``splits`` from a built cache (built first, untimed, if absent)."""
    splits = splits or ("train", "val", "test")
    for split in splits:  # make sure the cache exists
        load_dataset(name, split, root=root, cache_dir=cache_dir, download=False, progress=True)
    start = time.perf_counter()
    loaded = [load_dataset(name, split, root=root, cache_dir=cache_dir, download=False) for split in splits]
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    checksum = sum(int(ds.images[:, :, :, ::8, ::8].sum()) for ds in loaded)  # touch every class
    touch = time.perf_counter() - start
    return {"what": f"warm load {name} ({'+'.join(splits)})", "seconds": round(seconds, 3),
            "first_touch_seconds": round(touch, 3), "checksum": checksum}


def time_sampling(dataset, *, ways: int = 5, shots: int = 1, queries: int = 1, batch_size: int = 32,
                  device=None, seconds: float = 1.0) -> dict:
    """Episodes per second of ``EpisodeSampler.sample(batch_size)`` over about ``seconds``."""
    sampler = EpisodeSampler(dataset, ways=ways, shots=shots, queries=queries, device=device, seed=0)
    sampler.sample(batch_size)
    _sync(sampler.device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sampler.sample(batch_size)
        calls += 1
        if calls % 10 == 0:
            _sync(sampler.device)
    _sync(sampler.device)
    elapsed = time.perf_counter() - start
    return {"what": f"sample {dataset.name}/{dataset.split} {ways}-way {shots}-shot {queries}-query",
            "batch_size": batch_size, "device": str(sampler.device),
            "episodes_per_s": round(calls * batch_size / elapsed)}


def environment() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu_cores": cores,
            "torch_threads": torch.get_num_threads(), "load_average_1min": load,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def bench_data(*, root=None, cache_dir=None, cold: bool = False, mini_imagenet: bool = False,
               mini_splits=("train", "val", "test"), devices=("cpu",), seconds: float = 1.0) -> dict:
    """All data benchmarks: ``{"environment": {...}, "results": [{...}, ...]}``.

    ``cold`` adds the cache builds (Omniglot ~10 s; mini-ImageNet, with ``mini_imagenet``, minutes);
    ``mini_imagenet`` adds its warm load and sampling (from the first of ``mini_splits``).
    Sampling runs on each of ``devices``.
    """
    results = []
    names = ["omniglot"] + (["mini-imagenet"] if mini_imagenet else [])
    splits = {"mini-imagenet": tuple(mini_splits)}  # the splits each dataset is timed on (default: all)
    if cold:
        results += [time_cold_build(name, root=root, splits=splits.get(name)) for name in names]
    results += [time_warm_load(name, root=root, cache_dir=cache_dir, splits=splits.get(name))
                for name in names]
    train = load_dataset("omniglot", "train", root=root, cache_dir=cache_dir, download=False, rotations=True)
    for device in devices:
        for batch_size, queries in ((32, 1), (32, 15), (256, 1), (256, 15)):
            results.append(time_sampling(train, queries=queries, batch_size=batch_size, device=device,
                                         seconds=seconds))
        results.append(time_sampling(train, ways=20, shots=1, queries=5, batch_size=16, device=device,
                                     seconds=seconds))
        if mini_imagenet:
            mini = load_dataset("mini-imagenet", mini_splits[0], root=root, cache_dir=cache_dir)
            for shots, batch_size in ((1, 4), (5, 2)):
                results.append(time_sampling(mini, shots=shots, queries=15, batch_size=batch_size,
                                             device=device, seconds=seconds))
    return {"environment": environment(), "results": results}


def markdown(report: dict) -> str:
    """The report as a markdown table (plus one line describing the machine)."""
    env = report["environment"]
    lines = [f"{env['date']}, torch {env['torch']}, {env['cpu_cores']} CPU cores, {env['torch_threads']} torch "
             f"threads, load average {env['load_average_1min']:.1f}, GPU: {env['cuda'] or 'none'}", "",
             "| measurement | batch | device | result |", "|---|---|---|---|"]
    for row in report["results"]:
        if "episodes_per_s" in row:
            result = f"{row['episodes_per_s']:,} episodes/s"
        else:
            result = f"{row['seconds']} s" + (f" ({row['cache_mb']} MB)" if "cache_mb" in row else "")
        lines.append(f"| {row['what']} | {row.get('batch_size', '')} | {row.get('device', '')} | {result} |")
    return "\n".join(lines)
