"""``python -m mtl data prepare --dataset NAME`` and ``python -m mtl data info [--json]``.

Both read the dataset registry (``mtl.data.registry``): ``prepare`` offers every dataset whose spec
can build a cache, ``info`` describes every dataset whose spec can describe itself.
"""
from __future__ import annotations

import argparse
import json


def _preparable() -> list[str]:
    from mtl.data.registry import DATASETS

    return [name for name, spec in DATASETS.items() if spec.prepare is not None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    prepare = sub.add_parser("prepare", help="build the cache of a dataset (decode once, with a progress bar)")
    prepare.add_argument("--dataset", required=True, choices=_preparable())
    prepare.add_argument("--split", action="append",
                         help="split(s) to build, for datasets cached split by split (default: all)")
    prepare.add_argument("--image-size", type=int, default=None, help="side in pixels (default: the dataset's)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if the cache exists")
    prepare.add_argument("--no-download", action="store_true", help="never download (datasets that can be)")
    info = sub.add_parser("info", help="classes and images found per dataset and split (or why not)")
    info.add_argument("--json", action="store_true", help="print JSON")
    for p in (prepare, info):
        p.add_argument("--root", default=None, help="data folder (default: $MTL_DATA, else the repository's data/)")
        p.add_argument("--cache-dir", default=None, help="cache folder (default: $MTL_CACHE or data/cache)")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar (also MTL_PROGRESS=0)")


def run(args: argparse.Namespace) -> int:
    return _prepare(args) if args.action == "prepare" else _info(args)


def _prepare(args) -> int:
    from mtl.data import cache, dataset_spec
    from mtl.errors import DataError

    spec = dataset_spec(args.dataset)
    unknown = sorted(set(args.split or ()) - set(spec.splits))
    if unknown:
        raise DataError(f"{spec.name} has no split {unknown[0]!r}: use one of {', '.join(spec.splits)}")
    lines = spec.prepare(args.split, root=args.root, cache_dir=args.cache_dir, image_size=args.image_size,
                         progress=not args.no_progress, force=args.force, download=not args.no_download)
    for line in lines:
        print(line)
    print(f"cache folder: {cache.cache_dir(args.cache_dir)}")
    return 0


def _info(args) -> int:
    from mtl.data.info import names, report as data_report

    report = data_report(args.root, args.cache_dir)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"data folder (MTL_DATA): {report['data_root']}\ncache: {report['cache_dir']}")
    for name in names():
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
