"""Data benchmark: cold cache build, warm load, episodes/s (see benchmarks/README.md).

    MTL_DATA=/path/to/data python benchmarks/bench_data.py                  # warm load + sampling
    MTL_DATA=/path/to/data python benchmarks/bench_data.py --cold --mini-imagenet --device cpu --device cuda
"""
from __future__ import annotations

import argparse
import json

import torch

from mtl.data.bench import bench_data, markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also time cache builds (fresh temp folder)")
    parser.add_argument("--mini-imagenet", action="store_true", help="include mini-ImageNet (builds its cache once)")
    parser.add_argument("--mini-splits", default="train,val,test", help="mini-ImageNet splits to use")
    parser.add_argument("--device", action="append", help="sampling device(s) (default: cpu, and cuda if present)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before measuring")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per sampling measurement")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    report = bench_data(cold=args.cold, mini_imagenet=args.mini_imagenet, devices=devices, seconds=args.seconds,
                        mini_splits=tuple(args.mini_splits.split(",")))
    print(json.dumps(report, indent=2) if args.json else markdown(report))


if __name__ == "__main__":
    main()
