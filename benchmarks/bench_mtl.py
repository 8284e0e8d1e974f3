"""Speed of the meta-transfer learning pipeline's parts, on synthetic images (no dataset needed).

    python benchmarks/bench_mtl.py --device cuda --json runs/bench_mtl.json
    python benchmarks/bench_mtl.py --device cpu --channels 8,20,40,80 --image-size 28 --in-channels 1

1. Pre-training throughput (images/s; SGD step on an augmented batch of ``--batch-size``) of a
   ResNet-12 in float32, bf16 autocast, channels-last, and both.
2. One meta-step of MetaTransfer (Scaling & Shifting, linear head adapted ``--inner-steps`` times;
   with and without the hard-task meta-batch), one evaluation episode of MTL and of every baseline.
Prints a table and (``--json``) writes every figure with the device and torch version; the file is
rewritten after each measurement so a run cut short keeps what it measured.
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

from mtl.algorithms.transfer.finetune import BASELINES  # noqa: E402
from mtl.algorithms.transfer.meta_transfer import MetaTransfer  # noqa: E402
from mtl.data import EpisodeSampler, FewShotDataset  # noqa: E402
from mtl.algorithms.transfer.pretrain import EpochBatches, Pretrain  # noqa: E402
from mtl.models.resnet import ResNet12  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, *, warmup: int, repeat: int) -> float:
    """Seconds per call of ``fn`` (median of ``repeat`` after ``warmup``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def pretrain_throughput(images, channels, device, *, batch_size, bf16, channels_last, warmup, repeat):
    model = ResNet12(images.shape[2], images.shape[0], channels).to(device)
    learner = Pretrain(model, bf16=bf16, channels_last=channels_last)
    batches = EpochBatches(images, pad=images.shape[-2] // 8, flip=images.shape[2] == 3)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = iter(range(10**9))

    def step():
        optimizer.zero_grad(set_to_none=True)
        learner.meta_gradient(batches.sample_step(next(steps), batch_size))
        optimizer.step()
    return batch_size / _timed(step, device, warmup=warmup, repeat=repeat)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels", default="64,160,320,640")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--inner-steps", type=int, default=100)
    parser.add_argument("--ft-all-steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-pretrain", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    channels = tuple(int(c) for c in args.channels.split(","))
    size = args.image_size
    record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "channels": channels,
              "image_size": size, "batch_size": args.batch_size,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "pretrain_images_per_s": {}, "seconds": {}}

    def save():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.classes, 40, args.in_channels, size, size), dtype=torch.uint8,
                           generator=g).to(device)
    modes = {"fp32": (False, False), "channels_last": (False, True), "bf16": (True, False),
             "bf16+channels_last": (True, True)}
    if device.type == "cpu":
        modes = {"fp32": (False, False)}
    if not args.skip_pretrain:
        for name, (bf16, cl) in modes.items():
            rate = pretrain_throughput(images, channels, device, batch_size=args.batch_size, bf16=bf16,
                                       channels_last=cl, warmup=3, repeat=args.repeat)
            record["pretrain_images_per_s"][name] = round(rate, 1)
            print(f"pretrain {name:20s} {rate:9.1f} images/s", flush=True)
            save()

    data = FewShotDataset(images, [str(c) for c in range(args.classes)], "synthetic", "train")
    backbone = ResNet12(args.in_channels, args.classes, channels).to(device).eval()
    for shots in (1, 5):
        sampler = EpisodeSampler(data, ways=5, shots=shots, queries=15, device=device, seed=0)
        for hard in (0, 1):
            algo = MetaTransfer(backbone, ways=5, inner_steps=args.inner_steps, inner_lr=0.01,
                                hard_tasks=hard).to(device)
            draw = algo.attach_sampler(sampler)
            key = f"mtl_meta_step_5w{shots}s_batch1{'+1hard' if hard else ''}"
            step = lambda algo=algo, draw=draw: algo.meta_gradient(draw.sample(1))  # noqa: E731
            record["seconds"][key] = round(_timed(step, device, warmup=2, repeat=args.repeat), 4)
            print(f"{key:40s} {record['seconds'][key]:.4f} s", flush=True)
            save()
        episode = sampler.sample(1)
        learners = {"mtl": algo, **{n: cls(backbone, inner_steps=args.ft_all_steps if n == "finetune-all" else 100,
                                           inner_lr=0.01, ways=5).to(device) for n, cls in BASELINES.items()}}
        for name, learner in learners.items():
            key = f"episode_{name}_5w{shots}s"
            repeat = 2 if name == "finetune-all" else args.repeat
            adapt = lambda learner=learner, episode=episode: learner.predict(episode)  # noqa: E731
            record["seconds"][key] = round(_timed(adapt, device, warmup=1, repeat=repeat), 4)
            print(f"{key:40s} {record['seconds'][key]:.4f} s", flush=True)
            save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
