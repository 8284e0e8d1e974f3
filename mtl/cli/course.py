"""`python -m mtl course run | exercises | site`: every lesson top to bottom (executed copies + HTML),
the workshop copies with solutions blanked (``mtl.course.runner``), or the executed lessons as a
static website (``mtl.course.site``)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mtl.course.runner import NOTEBOOKS, _export_html, blank_solutions, execute_lesson, find_lessons
from mtl.errors import ConfigError
from mtl.io import atomic_write_text, check_output_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run_parser = sub.add_parser("run", help="execute the lessons in order; write executed copies + HTML")
    run_parser.add_argument("--profile", choices=["cpu", "gpu"], default=os.environ.get("MTL_PROFILE", "cpu"),
                            help="cpu: minutes on 2 cores (default); gpu: paper-sized budgets on a GPU (untested)")
    run_parser.add_argument("--out", type=Path, default=Path("course-out"),
                            help="folder for the executed notebooks and HTML (default: course-out)")
    run_parser.add_argument("--lessons", nargs="*", default=None, metavar="NN",
                            help="lesson numbers or name prefixes (default: all)")
    run_parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help=argparse.SUPPRESS)
    run_parser.add_argument("--inplace", action="store_true",
                            help="also overwrite notebooks/NN_*.ipynb with the executed, cleaned copy")
    run_parser.add_argument("--no-html", dest="html", action="store_false", help="skip the HTML export")
    run_parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    run_parser.add_argument("--no-progress", dest="progress", action="store_false")
    run_parser.add_argument("--jobs", type=int, default=1, metavar="N",
                            help="lessons executed at once, each in its own kernel (default 1); with more than "
                                 "one, each kernel gets one torch thread unless OMP_NUM_THREADS is set: --jobs 2 "
                                 "on 2 cores runs the CPU course in about half the time")
    ex_parser = sub.add_parser("exercises", help="write copies of the lessons with solution cells blanked")
    ex_parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help=argparse.SUPPRESS)
    ex_parser.add_argument("--out", type=Path, default=None,
                           help="destination (default: notebooks/exercises)")
    site_parser = sub.add_parser("site", help="build a static, searchable, offline website of the executed lessons")
    site_parser.add_argument("--out", type=Path, default=Path("course-out") / "site",
                             help="folder of the site (default: course-out/site)")
    site_parser.add_argument("--executed", type=Path, default=Path("course-out"),
                             help="folder of a course run's executed lessons (default: course-out); a lesson "
                                  "not there is shown with the committed outputs of notebooks/")
    site_parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help=argparse.SUPPRESS)


def _run_lessons(args: argparse.Namespace) -> int:
    import nbformat

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be 1 or more (lessons executed at once), not {args.jobs}")
    lessons = find_lessons(args.notebooks, args.lessons)
    out = check_output_folder(args.out, "--out")
    os.environ["MTL_PROFILE"] = args.profile  # the kernels inherit it
    os.environ.setdefault("MTL_PROGRESS", "0")  # bars inside lessons would clutter stored outputs
    if args.jobs > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per kernel: N lessons share N cores
    out.mkdir(parents=True, exist_ok=True)

    def run_one(path: Path) -> float:
        start = time.perf_counter()
        nb = execute_lesson(path, timeout=args.timeout, progress=args.progress)
        seconds = time.perf_counter() - start
        text = nbformat.writes(nb) + "\n"
        atomic_write_text(out / path.name, text)
        if args.html:
            _export_html(nb, out / f"{path.stem}.html")
        if args.inplace:
            atomic_write_text(path, text)
        return seconds

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each lesson runs in its own kernel process
        futures = {path.stem: pool.submit(run_one, path) for path in lessons}
        try:
            times = {name: future.result() for name, future in futures.items()}
        except BaseException:
            for future in futures.values():
                future.cancel()  # lessons not started yet; running ones finish
            raise
    width = max(len(k) for k in times)
    for name, seconds in times.items():
        print(f"{name:<{width}}  {seconds:7.1f} s")
    print(f"{'total':<{width}}  {sum(times.values()):7.1f} s of lesson time, {time.perf_counter() - start:.1f} s "
          f"wall with {args.jobs} at once   (profile {args.profile}; copies in {out})")
    return 0


def _write_exercises(args: argparse.Namespace) -> int:
    import nbformat

    out = check_output_folder(args.out if args.out else Path(args.notebooks) / "exercises", "--out")
    out.mkdir(parents=True, exist_ok=True)
    for path in find_lessons(args.notebooks):
        nb = blank_solutions(nbformat.read(path, as_version=4))
        atomic_write_text(out / path.name, nbformat.writes(nb) + "\n")
        print(f"wrote {out / path.name}")
    return 0


def _build_site(args: argparse.Namespace) -> int:
    from mtl.course.site import build_site

    start = time.perf_counter()
    lessons, warnings = build_site(args.out, notebooks=args.notebooks, executed=args.executed)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    n_run = sum(lesson.executed for lesson in lessons)
    print(f"site: {len(lessons)} lessons ({n_run} from the executed copies in {args.executed}, "
          f"{len(lessons) - n_run} from the committed outputs of {args.notebooks}) in "
          f"{time.perf_counter() - start:.0f} s -> {Path(args.out) / 'index.html'}")
    print(f"serve it: python -m http.server -d {args.out}   then open http://localhost:8000 "
          "(or open index.html directly; nothing is fetched from the network)")
    return 0


def run(args: argparse.Namespace) -> int:
    actions = {"run": _run_lessons, "exercises": _write_exercises, "site": _build_site}
    return actions[args.action](args)
