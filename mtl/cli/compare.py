"""`python -m mtl compare record RUN --method NAME --command "..."`: a finished run's test result,
parameter counts and provenance as ``results/<run>.json``, a row of the capstone's table.
`python -m mtl compare table [FOLDER]`: the recorded rows as the Markdown table of ``RESULTS.md``."""
from __future__ import annotations

import argparse

from mtl.errors import ResultsError
from mtl.course.compare import RESULTS, load_results, markdown_table, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    rec = sub.add_parser("record", help="results/<run>.json from a run folder, with provenance")
    rec.add_argument("run", help="run folder of `python -m mtl train ... --test-episodes 600 --out RUN`")
    rec.add_argument("--method", required=True, help="the row's name, e.g. MAML")
    rec.add_argument("--command", required=True, help="the command line that produced the run")
    rec.add_argument("--out", default=None, help="results file (default results/<run name>.json)")
    rec.add_argument("--force", action="store_true",
                     help="replace a results file that already exists (default: refuse)")
    rec.add_argument("--weights", default=None, metavar="FILE",
                     help="also export the tested model there, weights only (e.g. results/checkpoints/NAME.pt)")
    rec.add_argument("--choose-steps", default=None, metavar="K,K,...", type=_steps,
                     help="test again with the test-time inner steps among these (e.g. 1,3,5,10) that score best "
                          "on validation episodes (default: the run's own test result)")
    rec.add_argument("--select-episodes", type=int, default=100, metavar="N",
                     help="validation episodes that choose the steps (default 100)")
    table = sub.add_parser("table", help="the recorded rows of a results folder as a Markdown table")
    table.add_argument("folder", nargs="?", default=str(RESULTS),
                       help="results folder (default: the repository's results/)")
    table.add_argument("--pattern", default="*.json", help="which files, e.g. 'cpu-*.json' (default: all)")


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, e.g. 1,3,5,10; "
                                         f"got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    if args.action == "table":
        rows = load_results(args.folder, args.pattern)
        if not rows:
            raise ResultsError(f"no results file matches {args.pattern!r} in {args.folder}: record one with "
                               "`python -m mtl compare record RUN --method NAME --command ...`")
        print(markdown_table(rows))
        return 0
    target = record(args.run, method=args.method, command=args.command, out=args.out, force=args.force,
                    weights=args.weights, choose_steps=args.choose_steps, select_episodes=args.select_episodes)
    print(f"wrote {target}" + (f" and {args.weights}" if args.weights else ""))
    return 0
