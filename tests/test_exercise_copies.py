"""Workshop copies (``notebooks/exercises/``) are in sync with the lessons, and every exercise checker
rejects the blank cell a student starts from and accepts the lesson's solution."""
from __future__ import annotations

import math
import re
import subprocess
import sys

import nbformat
import pytest
import torch

import mtl
from mtl.course import exercises
from mtl.course.runner import NOTEBOOKS, SOLUTION_MARK, blank_solutions, find_lessons

LESSONS = find_lessons(NOTEBOOKS)
EXERCISES = NOTEBOOKS / "exercises"
_CHECK_CALL = re.compile(r"exercises\.(check_\w+)\((\w+)\)")
_REGENERATE = "run `python -m mtl course exercises` and commit notebooks/exercises/"


def _cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def _exercise_pairs():
    """(lesson, cell index of the solution, checker name, function name) for every marked cell."""
    pairs = []
    for lesson in LESSONS:
        cells = nbformat.read(lesson, as_version=4).cells
        for i, cell in enumerate(cells):
            if cell.cell_type == "code" and cell.source.lstrip().upper().startswith(SOLUTION_MARK):
                follow = "\n".join(c.source for c in cells[i + 1:i + 3] if c.cell_type == "code")
                match = _CHECK_CALL.search(follow)
                assert match, f"{lesson.name}: the {SOLUTION_MARK} cell {i} has no exercises.check_*(fn) after it"
                pairs.append(pytest.param(lesson, i, match[1], match[2], id=f"{lesson.stem}-{match[1]}"))
    return pairs


PAIRS = _exercise_pairs()


def _define(source: str, name: str):
    # what the lessons import before their exercises (a solution may use any of these names)
    namespace = {"torch": torch, "F": torch.nn.functional, "nn": torch.nn, "math": math, "mtl": mtl,
                 "exercises": exercises}
    exec(compile(source, f"<cell defining {name}>", "exec"), namespace)  # noqa: S102 - the lesson's own cell
    return namespace[name]


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_exercise_copy_is_up_to_date(lesson):
    copy = EXERCISES / lesson.name
    assert copy.is_file(), f"no workshop copy of {lesson.name}: {_REGENERATE}"
    want = blank_solutions(nbformat.read(lesson, as_version=4))
    have = nbformat.read(copy, as_version=4)
    assert _cells(have) == _cells(want), f"{copy} is out of date with {lesson.name}: {_REGENERATE}"
    assert not any(cell.get("outputs") for cell in have.cells if cell.cell_type == "code"), \
        f"{copy} holds outputs (solutions may show in them): {_REGENERATE}"


def test_no_stray_copies():
    stray = sorted({p.name for p in EXERCISES.glob("*.ipynb")} - {p.name for p in LESSONS})
    assert not stray, f"copies without a lesson: {stray}; delete them and {_REGENERATE}"


@pytest.mark.parametrize("lesson, index, checker, name", PAIRS)
def test_checker_accepts_the_solution(lesson, index, checker, name, capsys):
    solution = nbformat.read(lesson, as_version=4).cells[index].source
    getattr(exercises, checker)(_define(solution, name))
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("lesson, index, checker, name", PAIRS)
def test_checker_rejects_the_blank(lesson, index, checker, name):
    blank = blank_solutions(nbformat.read(lesson, as_version=4)).cells[index].source
    assert "NotImplementedError" in blank and SOLUTION_MARK not in blank
    with pytest.raises((exercises.ExerciseError, NotImplementedError)):
        getattr(exercises, checker)(_define(blank, name))


@pytest.mark.parametrize("checker", [n for n in exercises.__all__ if n.startswith("check_")])
def test_every_checker_has_an_exercise(checker):
    used = {values.values[2] for values in PAIRS}
    if checker not in used:
        pytest.skip(f"no lesson uses exercises.{checker} yet")
    assert callable(getattr(exercises, checker))


def test_nbval_does_not_collect_the_copies():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--nbval", "-p", "no:cacheprovider",
                          str(NOTEBOOKS)], capture_output=True, text=True, timeout=120).stdout
    assert "exercises/" not in out and "exercises\\" not in out, out[-2000:]
    assert any(lesson.name in out for lesson in LESSONS), out[-2000:]
