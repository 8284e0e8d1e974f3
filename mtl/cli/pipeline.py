"""`python -m mtl pipeline`: meta-transfer learning end to end (pre-train, Scaling & Shifting,
baselines), every stage a run folder that a second call reuses."""
from __future__ import annotations

import argparse
from pathlib import Path

from mtl.course.pipeline import PROFILES, run_pipeline
from mtl.io import check_output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--out", default="runs/mtl-pipeline")
    parser.add_argument("--budget", type=float, default=None, help="total training wall time, seconds")
    parser.add_argument("--episodes", type=int, default=None, help="test episodes (default: the profile's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("episodes", args.episodes), ("device", args.device)) if v is not None}
    args.out = check_output_folder(args.out, "--out")
    results = run_pipeline(args.profile, out=args.out, budget_s=args.budget,
                           progress=False if args.no_progress else None, **overrides)
    for name, row in results["test"].items():
        print(f"{name:18s} {100 * row['mean']:6.2f} +- {100 * row['ci95']:.2f} % ({row['n']} episodes)")
    print(f"wall time: {results['wall_s']}; results in {Path(args.out) / f'results-{args.profile}.json'}")
    return 0

