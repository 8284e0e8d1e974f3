"""`python -m mtl evaluate`: accuracy +- 95% interval of a checkpoint on fixed, seeded episodes."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from mtl.engine.evaluate import Evaluation, evaluate_checkpoint
from mtl.cli import set_threads
from mtl.io import atomic_write_text, check_output_file

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint file, or a run folder (best.pt, else last.pt)")
    parser.add_argument("--episodes", type=int, default=600, help="number of test episodes (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed episode set (default 0)")
    parser.add_argument("--inner-steps", type=int, default=None,
                        help="inner steps at test (default: the run's test_inner_steps)")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the run's device, auto)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write the result here (default: beside the checkpoint; '-' prints it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (also MTL_PROGRESS=0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.json not in (None, "-"):
        args.json = check_output_file(args.json, "--json")
    result = evaluate_checkpoint(args.checkpoint, split=args.split, episodes=args.episodes,
                                 seed=args.seed, inner_steps=args.inner_steps, device=args.device,
                                 progress=False if args.no_progress else None)
    print(result)
    text = json.dumps(result.to_dict(), indent=2)
    if args.json == "-":
        print(text)
        return 0
    target = Path(args.json) if args.json else _default_json(result)
    try:
        atomic_write_text(target, text + "\n")
        print(f"wrote {target}")
    except OSError as exc:
        print(f"warning: could not write {target} ({exc}); pass --json FILE elsewhere", file=sys.stderr)
    return 0


def _default_json(result: Evaluation) -> Path:
    ckpt = Path(result.protocol["checkpoint"])
    return ckpt.with_name(f"eval-{result.split}-{ckpt.stem}-steps{result.inner_steps}-seed{result.seed}.json")
