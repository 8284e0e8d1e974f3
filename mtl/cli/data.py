"""``python -m mtl data prepare --dataset {omniglot,mini-imagenet}`` and ``python -m mtl data info [--json]``."""
from __future__ import annotations

import argparse
import json



def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    prepare = sub.add_parser("prepare", help="build the cache of a dataset (decode once, with a progress bar)")
    prepare.add_argument("--dataset", required=True, choices=["omniglot", "mini-imagenet"])
    prepare.add_argument("--split", action="append", help="mini-ImageNet split(s) to build (default: all)")
    prepare.add_argument("--image-size", type=int, default=None, help="side in pixels (default 28 / 84)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if the cache exists")
    prepare.add_argument("--no-download", action="store_true", help="never download (Omniglot)")
    info = sub.add_parser("info", help="classes and images found per dataset and split (or why not)")
    info.add_argument("--json", action="store_true", help="print JSON")
    for p in (prepare, info):
        p.add_argument("--root", default=None, help="data folder (default: $MTL_DATA, else the repository's data/)")
        p.add_argument("--cache-dir", default=None, help="cache folder (default: $MTL_CACHE or data/cache)")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar (also MTL_PROGRESS=0)")


def run(args: argparse.Namespace) -> int:
    return _prepare(args) if args.action == "prepare" else _info(args)


def _prepare(args) -> int:
    from mtl.data import cache, miniimagenet, omniglot

    common = dict(root=args.root, cache_dir=args.cache_dir, image_size=args.image_size,
                  progress=not args.no_progress, force=args.force)
    if args.dataset == "omniglot":
        content = omniglot.prepare(download=not args.no_download, **common)
        print(f"omniglot: {content['images'].shape[0]} characters x {content['images'].shape[1]} drawers -> "
              f"{omniglot.cache_path(args.cache_dir, args.image_size or omniglot.DEFAULT_SIZE)}")
        return 0
    for split in args.split or list(miniimagenet.SPLITS):
        content = miniimagenet.prepare(split, **common)
        classes, per_class = content["images"].shape[:2]
        print(f"mini-imagenet {split}: {classes} classes x {per_class} images -> "
              f"{miniimagenet.cache_path(split, args.cache_dir, args.image_size or miniimagenet.DEFAULT_SIZE)}")
    print(f"cache folder: {cache.cache_dir(args.cache_dir)}")
    return 0


def _info(args) -> int:
    from mtl.data.info import NAMES, report as data_report

    report = data_report(args.root, args.cache_dir)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"data folder (MTL_DATA): {report['data_root']}\ncache: {report['cache_dir']}")
    for name in NAMES:
        entry = report[name]
        errors = {row["error"] for row in entry["splits"].values()}
        if entry["source"] is None and len(errors) == 1:
            print(f"{name}: not available: {errors.pop()}")
            continue
        print(f"{name}  ({entry['source']})")
        for split, row in entry["splits"].items():
            if row["found"]:
                print(f"  {split:<11} {row['classes']:>5} classes x {row['per_class']:>3} = {row['images']:>6} images")
            else:
                print(f"  {split:<11} not available: {row['error']}")
    return 0
