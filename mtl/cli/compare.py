"""`python -m mtl compare record RUN --method NAME --command "..."`: a finished run's test result,
parameter counts and provenance as ``results/<run>.json``, a row of the capstone's table."""
from __future__ import annotations

import argparse

from mtl.course.compare import record
from mtl.errors import MTLError, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    rec = sub.add_parser("record", help="results/<run>.json from a run folder, with provenance")
    rec.add_argument("run", help="run folder of `python -m mtl train ... --test-episodes 600 --out RUN`")
    rec.add_argument("--method", required=True, help="the row's name, e.g. MAML")
    rec.add_argument("--command", required=True, help="the command line that produced the run")
    rec.add_argument("--out", default=None, help="results file (default results/<run name>.json)")


def run(args: argparse.Namespace) -> int:
    try:
        print(f"wrote {record(args.run, method=args.method, command=args.command, out=args.out)}")
    except MTLError as exc:  # usage errors exit 2, other failures 1
        return report(exc)
    return 0
