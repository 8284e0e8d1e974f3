"""`python -m mtl`: every sub-command is reachable and documents itself."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mtl.algorithms import ALGORITHMS
from mtl.cli import COMMANDS, build_parser


def _mtl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtl", *args], capture_output=True, text=True)


def test_the_top_level_help_lists_every_command():
    done = _mtl("--help")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert name in done.stdout
    assert build_parser().prog == "python -m mtl"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_a_help_page(command):
    done = _mtl(command, "--help")
    assert done.returncode == 0, done.stderr
    assert f"python -m mtl {command}" in done.stdout


def test_train_help_names_every_registered_algorithm():
    text = "".join(_mtl("train", "--help").stdout.split())  # help lines wrap at spaces and hyphens
    missing = [name for name in ALGORITHMS if name not in text]
    assert missing == []
