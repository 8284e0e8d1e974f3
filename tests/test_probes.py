"""Every bad input a careless user gives the CLI: a clear error naming the fix, no traceback, the
right exit code (2 for a usage error, 1 for a runtime failure), and no file touched."""
from __future__ import annotations

from pathlib import Path

import pytest

from mtl.cli import main

TINY = ["--dataset", "sinusoid", "--algorithm", "maml", "--shots", "5", "--queries", "5",
        "--meta-batch", "2", "--val-episodes", "4", "--eval-batch", "4", "--device", "cpu",
        "--no-progress"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("probes") / "run"
    assert main(["train", *TINY, "--iterations", "2", "--val-every", "2", "--out", str(run)]) == 0
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


TRAIN_PROBES = [
    (["--ways", "0"], "ways must be >= 1"),
    (["--algorithm", "mamll"], "unknown algorithm 'mamll'"),
    (["--inner-lr", "-0.4"], "inner_lr must be >= 0"),
    (["--test-inner-steps", "-1"], "test_inner_steps must be >= 0"),
    (["--hidden", "0"], "hidden must be >= 1"),
    (["--time-budget", "-5"], "time_budget_s must be a positive number"),
    (["--checkpoint-every", "0"], "checkpoint_every must be >= 1"),
    (["--device", "mps"], "device must be auto, cpu, cuda"),
    (["--device", "tpu"], "device must be auto, cpu, cuda"),
    (["--set", "foo=1"], "--set foo=... is not a setting of --algorithm maml"),
    (["--model", "resnet12"], "does not fit dataset 'sinusoid'"),
    (["--lr-step", "0"], "lr_step must be >= 1"),
]


def _refused(argv: list[str], message: str, run_folder: Path, capsys) -> None:
    """``argv`` exits 2 with ``message`` on stderr, no traceback, and leaves the run folder as it was."""
    before = _files(run_folder)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err, err
    assert _files(run_folder) == before


@pytest.mark.parametrize("flags, message", TRAIN_PROBES, ids=[" ".join(f) for f, _ in TRAIN_PROBES])
def test_train_probes(run_folder, capsys, flags, message):
    _refused(["train", *TINY, "--out", str(run_folder), "--overwrite", *flags], message, run_folder, capsys)


def test_omniglot_episode_shapes_name_the_flag_that_sets_them(tmp_path, capsys):
    base = ["train", "--dataset", "omniglot", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*base, "--test-ways", "200"]) == 2
    err = capsys.readouterr().err
    assert "--test-ways 100 or fewer" in err and "rotations" not in err
    assert main([*base, "--test-queries", "25"]) == 2
    assert "--test-queries 25" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


EVALUATE_PROBES = [
    (["--episodes", "0"], "episodes must be a whole number >= 1"),
    (["--inner-steps", "-1"], "inner steps must be a whole number >= 0"),
    (["--device", "mps"], "device 'mps' is not supported"),
]


@pytest.mark.parametrize("flags, message", EVALUATE_PROBES, ids=[" ".join(f) for f, _ in EVALUATE_PROBES])
def test_evaluate_probes(run_folder, capsys, flags, message):
    _refused(["evaluate", "--checkpoint", str(run_folder), "--no-progress", *flags], message, run_folder, capsys)


def test_pipeline_refuses_zero_episodes_before_training(tmp_path, capsys):
    from mtl.cli import main

    code = main(["pipeline", "--episodes", "0", "--out", str(tmp_path / "p"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "episodes must be" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()
