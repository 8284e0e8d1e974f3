"""Your own images: how long caching a folder takes, and how long adapting to one new task takes.

    python benchmarks/bench_folder.py [--images 10000] [--size 84] [--json F]

1. Writes a synthetic folder of ``--images`` PNG images (200 classes, 84 x 84 RGB drawings) into a
   temporary folder and times ``mtl.data.folder.prepare`` (cold: decode + cache write; warm: load).
2. For Conv4 learners (MAML adapting all weights with its test-time steps, ProtoNet) at Omniglot
   and mini-ImageNet image shapes, times
   ``FewShotClassifier.fit`` + ``predict`` on one new 5-way 5-shot task with 20 query images,
   after the checkpoint is loaded (median of 7 after a warm-up): preprocessing included.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mtl.engine.classifier import FewShotClassifier
from mtl.engine.config import TrainConfig
from mtl.data import folder
from mtl.engine.build import build_learner


def write_folder(root: Path, images: int, size: int, classes: int = 200) -> None:
    rng = np.random.default_rng(0)
    per_class = images // classes
    for c in range(classes):
        (root / f"c{c:03d}").mkdir(parents=True)
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        for k in range(per_class):
            noise = rng.integers(0, 40, (8, 8, 3), dtype=np.uint8)
            tile = Image.fromarray(base + noise).resize((size, size), Image.Resampling.NEAREST)
            tile.save(root / f"c{c:03d}" / f"{k}.png")


def time_adaptation(algorithm: str, dataset: str, hidden: int, size: int, steps: int) -> float:
    """Seconds of ``fit`` + ``predict`` on one 5-way 5-shot task with 20 query images."""
    inner = dict(inner_steps=1, inner_lr=0.01) if steps else {}  # ProtoNet: no inner loop
    config = TrainConfig(algorithm=algorithm, dataset=dataset, ways=5, shots=5, test_inner_steps=steps,
                         hidden=hidden, image_size=size, device="cpu", **inner).resolved()
    clf = FewShotClassifier(build_learner(config, torch.device("cpu")), config)
    g = torch.Generator().manual_seed(0)
    shape = (size, size) if config.channels == 1 else (size, size, 3)
    support = [Image.fromarray(np.asarray(torch.randint(0, 256, shape, generator=g,
                                                        dtype=torch.uint8))) for _ in range(25)]
    labels = [i // 5 for i in range(25)]
    queries = support[:20]
    times = []
    for i in range(8):
        start = time.perf_counter()
        clf.fit(support, labels)
        clf.predict(queries)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "images": args.images,
              "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "photos", Path(tmp) / "cache"
        start = time.perf_counter()
        write_folder(root, args.images, args.size)
        result["write_s"] = time.perf_counter() - start
        start = time.perf_counter()
        content = folder.prepare(root, cache_dir=cache, image_size=args.size, progress=False)
        result["cold_cache_s"] = time.perf_counter() - start
        assert int(content["counts"].sum()) == args.images
        start = time.perf_counter()
        folder.prepare(root, cache_dir=cache, image_size=args.size, progress=False)
        result["warm_load_s"] = time.perf_counter() - start
    print(f"{args.images} images of {args.size} px: cached in {result['cold_cache_s']:.1f} s "
          f"(writing them took {result['write_s']:.1f} s); warm load {result['warm_load_s']:.2f} s")
    cases = [("maml", "omniglot", 64, 28, 3), ("protonet", "omniglot", 64, 28, 0),
             ("maml", "mini-imagenet", 32, 84, 10), ("protonet", "mini-imagenet", 64, 84, 0)]
    for algorithm, dataset, hidden, size, steps in cases:
        seconds = time_adaptation(algorithm, dataset, hidden, size, steps)
        result[f"adapt_{algorithm}_{dataset}_s"] = seconds
        print(f"adapt {algorithm:8s} {dataset:13s} (Conv4-{hidden}, {size} px, 5-way 5-shot, "
              f"20 queries, {steps} inner steps): {1000 * seconds:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
