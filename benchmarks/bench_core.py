"""Core benchmark: meta-steps per second and peak memory of the inner/outer loops.

    python benchmarks/bench_core.py --device cuda                 # the full table, < 5 min on an H100
    python benchmarks/bench_core.py --device cpu --interleave \\
        --configs omniglot-5w1s-b8-s1 --impls auto l2l functional higher floor

The same as ``python -m mtl bench`` (see ``mtl/cli/bench.py`` for every option), with the JSON
written to ``runs/bench/core-<device>-<UTC date>.json`` unless ``--json`` is given, and the
Markdown table printed at the end (paste it into ``benchmarks/README.md`` with the card, torch
version and date).
"""
from __future__ import annotations

import datetime
import sys

from mtl.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--json" not in argv:
        device = argv[argv.index("--device") + 1] if "--device" in argv else "auto"
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M")
        argv += ["--json", f"runs/bench/core-{device}-{stamp}.json"]
    raise SystemExit(main(["bench", *argv]))
