"""Hostile input, one class of fault per test: every output path checked before anything is
computed, a run folder owned by one process, ``--overwrite`` that never loses the old run, one
handler for every failure. Each test asserts the exit code, one ``error:`` line without a
traceback, and that a snapshot of the folders it touched is unchanged.

Nothing here writes to a real device: device-like targets are FIFOs and symbolic links made in
``tmp_path``.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtl.algorithms import register_algorithm
from mtl.algorithms.maml import MAML
from mtl.cli import main
from mtl.engine.rundir import LOCK, REPLACED
from mtl.errors import OutputError
from mtl.io import atomic_write_text, check_output_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "sinusoid", "--algorithm", "maml", "--shots", "5", "--queries", "5",
        "--meta-batch", "2", "--inner-steps", "1", "--inner-lr", "0.01", "--strategy", "loop",
        "--val-episodes", "10", "--eval-batch", "10", "--device", "cpu", "--no-progress"]


def snapshot(*folders: Path) -> dict[str, object]:
    """Every entry under ``folders``: its type, and its bytes (files) or target (links)."""
    found: dict[str, object] = {}
    for folder in folders:
        if not os.path.lexists(folder):
            found[str(folder)] = None
            continue
        for path in [folder, *sorted(folder.rglob("*"))] if folder.is_dir() else [folder]:
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                found[str(path)] = ("file", path.read_bytes())
            else:
                found[str(path)] = ("dir" if stat.S_ISDIR(mode) else "special", stat.S_IFMT(mode))
    return found


def refused(capsys, code: int, expected: int = 1, *words: str) -> str:
    """Assert one clean refusal: the exit code, an ``error:`` line, no traceback, ``words`` in it."""
    err = capsys.readouterr().err
    assert code == expected, err
    assert "error: " in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished sinusoid run (2 meta-steps, a test result) to evaluate and record."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *TINY, "--iterations", "2", "--val-every", "2", "--test-episodes", "4",
                 "--out", str(run)]) == 0
    return run


def _targets(tmp_path: Path) -> dict[str, Path]:
    """Paths no output may be written through: a FIFO, a link to a file, a link to a folder's
    file, a folder."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "link.json"
    link.symlink_to(precious)
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"fifo": fifo, "link": link, "folder": folder}


# ----------------------------------------------------------------------------- 1. writes
@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_no_command_writes_through_a_fifo_a_link_or_a_folder(tmp_path, capsys, tiny_run, kind):
    target = _targets(tmp_path)[kind]
    before = snapshot(tmp_path, tiny_run)
    commands = [
        ["evaluate", "--checkpoint", str(tiny_run), "--episodes", "2", "--no-progress", "--json", str(target)],
        ["adapt", "--checkpoint", str(tiny_run), "--support", str(tmp_path / "absent"),
         "--query", str(tmp_path / "absent"), "--json", str(target)],
        ["compare", "record", str(tiny_run), "--method", "MAML", "--command", "x", "--out", str(target)],
    ]
    for argv in commands:
        started = time.perf_counter()
        err = refused(capsys, main(argv), 1, str(target))
        assert "--json" in err or "results file" in err  # the output is named, not a later input
        assert time.perf_counter() - started < 5, "refused before anything was computed"
    assert snapshot(tmp_path, tiny_run) == before


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    before = snapshot(tmp_path)
    for argv in (["train", *TINY, "--out", str(blocker)],
                 ["pipeline", "--out", str(blocker), "--no-progress"],
                 ["course", "run", "--lessons", "00", "--out", str(blocker), "--no-html"],
                 ["course", "exercises", "--out", str(blocker)]):
        refused(capsys, main(argv), 1, str(blocker), "not a folder")
    assert snapshot(tmp_path) == before


def test_the_one_atomic_write_refuses_special_targets_and_reports_a_failed_write(tmp_path):
    targets = _targets(tmp_path)
    before = snapshot(tmp_path)
    for target in targets.values():
        with pytest.raises(OutputError, match="fifo|FIFO|link|folder"):
            atomic_write_text(target, "x")
    assert snapshot(tmp_path) == before
    assert check_output_file(tmp_path / "new.json") == tmp_path / "new.json"

    def full_disk(f):
        raise OSError(28, "No space left on device")

    (tmp_path / "kept.json").write_text("old")
    from mtl.io import atomic_write

    with pytest.raises(OutputError, match="No space left.*left as it was"):
        atomic_write(tmp_path / "kept.json", full_disk)
    assert (tmp_path / "kept.json").read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_checkpoint_that_is_a_fifo_is_refused_not_read(tmp_path, capsys):
    fifo = tmp_path / "last.pt"
    os.mkfifo(fifo)
    refused(capsys, main(["evaluate", "--checkpoint", str(fifo), "--json", "-"]), 1, "FIFO")


def test_tilde_in_out_is_the_home_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--iterations", "1", "--val-every", "1", "--out", "~/run"]) == 0
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "~").exists()


# ----------------------------------------------------------------------------- 2. one owner
def test_a_run_folder_in_use_is_refused_and_a_stale_lock_is_named_and_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(f"{owner.pid} {socket.gethostname()}\n")
        before = snapshot(tmp_path)
        for extra in ([], ["--overwrite"], ["--resume"]):
            refused(capsys, main(["train", *TINY, "--iterations", "1", "--out", str(run), *extra]), 1,
                    f"in use by process {owner.pid}", "wait")
        assert snapshot(tmp_path) == before
    finally:
        owner.kill()
        owner.wait()
    assert main(["train", *TINY, "--iterations", "1", "--val-every", "1", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"stale lock {run / LOCK} of process {owner.pid}" in err
    assert (run / "last.pt").is_file() and not (run / LOCK).exists()


def test_two_concurrent_trains_and_sigterm(tmp_path, capsys):
    """A second `train` into a folder a live run owns is refused; SIGTERM stops the first like
    Ctrl-C (exit 130, a message that says what exists, the lock released)."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "mtl", "train", *TINY, "--iterations", "100000",
                              "--val-every", "5", "--out", str(run)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "last.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (run / "last.pt").exists(), first.communicate(timeout=5)
        refused(capsys, main(["train", *TINY, "--iterations", "3", "--out", str(run), "--overwrite"]), 1,
                f"in use by process {first.pid}")
        assert (run / LOCK).read_text().split()[0] == str(first.pid)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, err
    assert "Traceback" not in err and "continue with --resume" in err and str(run / "last.pt") in err
    assert not (run / LOCK).exists()
    assert main(["train", "--out", str(run), "--resume", "--iterations", "6", "--no-progress"]) == 0


# ----------------------------------------------------------------------------- 3. nothing lost
class LateNaN(MAML):
    """MAML whose meta-loss turns NaN at its 4th meta-step (after checkpoints at steps 2)."""

    def meta_gradient(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        metrics = super().meta_gradient(batch)
        return {**metrics, "loss": math.nan} if self.calls >= 4 else metrics


def test_an_overwrite_that_fails_late_keeps_the_old_run_and_says_where(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--iterations", "2", "--val-every", "2", "--out", str(run)]) == 0
    old = snapshot(run)
    register_algorithm("late-nan", LateNaN)
    argv = ["train", *TINY, "--algorithm", "late-nan", "--iterations", "8", "--val-every", "3",
            "--checkpoint-every", "2", "--out", str(run)]
    err = refused(capsys, main([*argv, "--overwrite"]), 1, "meta-loss nan", str(run / REPLACED))
    assert "moving the run" in err and "last.pt" in err  # what it moves is listed first
    assert "best validation (step 3)" in err and "--init" in err and str(run / "best.pt") in err
    kept = {k.replace(f"/{REPLACED}", ""): v for k, v in snapshot(run / REPLACED).items()}
    assert {k: v for k, v in kept.items() if k != str(run)} == {k: v for k, v in old.items() if k != str(run)}
    # again: refused before anything changes, the old run named
    before = snapshot(run)
    refused(capsys, main([*argv, "--overwrite"]), 1, str(run / REPLACED), "mv")
    refused(capsys, main(argv), 1, "already exists", str(run / REPLACED))
    assert snapshot(run) == before


def test_a_diverged_run_without_validation_does_not_claim_a_good_checkpoint(tmp_path, capsys):
    register_algorithm("late-nan", LateNaN)
    err = refused(capsys, main(["train", *TINY, "--algorithm", "late-nan", "--iterations", "8",
                                "--val-every", "8", "--checkpoint-every", "2",
                                "--out", str(tmp_path / "run")]), 1, "no validation has scored it")
    assert "--init" not in err


def test_overwrite_touches_only_what_mtl_wrote(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--iterations", "2", "--val-every", "2", "--out", str(run)]) == 0
    (run / "eval-notes.txt").write_text("my notes")
    (run / "eval-plots").mkdir()
    (run / "eval-plots" / "a.png").write_bytes(b"\x89PNG")
    before = snapshot(tmp_path)
    refused(capsys, main(["train", *TINY, "--iterations", "2", "--out", str(run), "--overwrite"]), 1,
            "eval-notes.txt", "eval-plots", "did not write")
    assert snapshot(tmp_path) == before


def test_compare_record_never_replaces_a_result_without_force_and_records_mse(tmp_path, capsys, tiny_run):
    out = tmp_path / "results" / "run.json"
    assert main(["compare", "record", str(tiny_run), "--method", "MAML", "--command", "c", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["row"]
    assert row["metric"] == "mse" and row["dataset"] == "sinusoid"
    before = snapshot(tmp_path)
    refused(capsys, main(["compare", "record", str(tiny_run), "--method", "Other", "--command", "c",
                          "--out", str(out)]), 1, "already exists", "--force")
    assert snapshot(tmp_path) == before
    assert main(["compare", "record", str(tiny_run), "--method", "Other", "--command", "c", "--out", str(out),
                 "--force"]) == 0
    assert json.loads(out.read_text())["row"]["method"] == "Other"


# ----------------------------------------------------------------------------- 4. one handler
class Explodes(MAML):
    def meta_gradient(self, batch):
        raise RuntimeError("a bug")


class Interrupted(MAML):
    def meta_gradient(self, batch):
        raise KeyboardInterrupt


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    register_algorithm("explodes", Explodes)
    argv = ["train", *TINY, "--algorithm", "explodes", "--iterations", "2", "--out", str(tmp_path / "r")]
    refused(capsys, main(argv), 1, "unexpected RuntimeError: a bug", "--debug")
    assert not (tmp_path / "r").exists()
    with pytest.raises(RuntimeError, match="a bug"):
        main([*argv, "--debug"])
    monkeypatch.setenv("MTL_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)


def test_an_interruption_before_the_first_checkpoint_says_nothing_was_kept(tmp_path, capsys):
    register_algorithm("interrupted", Interrupted)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--algorithm", "interrupted", "--iterations", "2", "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was written yet" in err and "--resume" not in err
    assert not run.exists()


@pytest.mark.parametrize("threads", ["0", "-1", "100000"])
def test_threads_out_of_range_are_refused(tmp_path, capsys, threads, tiny_run):
    before = snapshot(tmp_path)
    refused(capsys, main(["train", *TINY, "--threads", threads, "--out", str(tmp_path / "r")]), 2,
            "--threads must be between 1 and")
    refused(capsys, main(["evaluate", "--checkpoint", str(tiny_run), "--threads", threads]), 2, "--threads")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- 5. bounds
def _exit_code(argv: list[str]) -> int:
    """``main(argv)``'s exit code, argparse's own refusals (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def test_every_numeric_train_flag_at_hostile_values_is_refused_or_runs(tmp_path, capsys):
    from mtl.cli.train import _OPTIONS

    numeric = [name for name, kind, _ in _OPTIONS if kind in (int, float)]
    assert len(numeric) > 20
    base = [*TINY, "--iterations", "1", "--val-every", "1", "--val-episodes", "2", "--eval-batch", "2"]
    for i, name in enumerate(numeric):
        for value in ("0", "-1", "nan", "inf", "1e300"):
            out = tmp_path / f"r{i}-{value}"
            code = _exit_code(["train", *base, f"--{name}", value, "--out", str(out)])
            err = capsys.readouterr().err
            assert "Traceback" not in err and "unexpected" not in err, (name, value, err)
            if code != 0:
                assert code in (1, 2) and "error:" in err, (name, value, code, err)
                assert not out.exists(), (name, value, "a refused run leaves no folder")


@pytest.mark.parametrize("flag, value", [("--inner-steps", "100000000"), ("--hidden", "200000"),
                                         ("--meta-batch", "100000"), ("--seed", str(10**23)),
                                         ("--image-size", "4"), ("--queries", "100000")])
def test_absurd_sizes_are_refused_with_the_flag_named(tmp_path, capsys, flag, value):
    dataset = ["--dataset", "omniglot"] if flag == "--image-size" else []
    code = main(["train", *TINY, *dataset, flag, value, "--out", str(tmp_path / "r")])
    refused(capsys, code, 2, flag)
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_that_claims_absurd_settings_is_refused_before_building(tmp_path, capsys, tiny_run):
    import torch

    data = torch.load(tiny_run / "last.pt", weights_only=True)
    data["config"]["hidden"] = 200_000
    forged = tmp_path / "forged.pt"
    torch.save(data, forged)
    before = snapshot(tmp_path)
    started = time.perf_counter()
    for command in (["evaluate", "--checkpoint", str(forged), "--json", "-"],
                    ["adapt", "--checkpoint", str(forged), "--support", str(tmp_path), "--query", str(tmp_path)]):
        refused(capsys, main(command), 1, str(forged), "hidden must be at most")
    assert time.perf_counter() - started < 10 and snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- 8. pickled code
def test_a_checkpoint_with_an_os_system_payload_never_runs_and_never_advises_weights_only_false(
        tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "mtl-checkpoint", "version": 1, "config": {}, "step": 0, "learner": Payload()}, evil)
    for command in (["evaluate", "--checkpoint", str(evil), "--json", "-"],
                    ["adapt", "--checkpoint", str(evil), "--support", str(tmp_path), "--query", str(tmp_path)]):
        err = refused(capsys, main(command), 1, "never runs code from a checkpoint")
        assert "weights_only=False" not in err and "Re-running" not in err  # torch's own hint is left out
    assert not marker.exists()


# ----------------------------------------------------------------------------- 5. archive bombs
@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_an_archive_member_that_claims_too_much_is_refused_before_it_is_read(tmp_path, suffix):
    from archive_helpers import write_archive

    from mtl.data import archives
    from mtl.errors import DataError

    bomb, big = tmp_path / f"bomb{suffix}", bytes(archives.MAX_MEMBER_BYTES + 1)
    if suffix == ".zip":
        import zipfile

        with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("train/big.csv", big)
    else:
        write_archive(bomb, {"train/big.csv": big})
    assert bomb.stat().st_size < 2**20  # a small file that claims more than the ceiling
    with pytest.raises(DataError, match="claims .* bytes"):
        list(archives.iter_files(bomb))
    assert archives.list_names(bomb) == ["train/big.csv"]  # listing reads nothing


def test_data_info_reports_a_bomb_or_a_non_utf8_csv_as_an_error_not_a_crash(tmp_path, capsys):
    from archive_helpers import write_archive

    from mtl.data import archives

    root = tmp_path / "data"
    write_archive(root / "mini-imagenet" / "train.tar.gz",
                  {"train.csv": bytes(archives.MAX_MEMBER_BYTES + 1)})
    write_archive(root / "mini-imagenet" / "val.tar.gz", {"val.csv": b"filename,label\n\xff\xfe\n"})
    before = snapshot(root)
    assert main(["data", "info", "--json", "--root", str(root), "--cache-dir", str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    text = captured.out
    assert "claims" in text and "not UTF-8" in text, text
    assert snapshot(root) == before


def test_sinusoid_refuses_classifiers_and_regresses_with_every_regressor(tmp_path, capsys):
    base = [*TINY, "--iterations", "1", "--val-every", "1", "--val-episodes", "2", "--eval-batch", "2"]
    for name in ("protonet", "protomaml"):
        refused(capsys, main(["train", *base, "--algorithm", name, "--out", str(tmp_path / name)]), 2,
                "only classifies", "maml")
        assert not (tmp_path / name).exists()
    for name in ("fomaml", "reptile", "metasgd"):  # their constructors forward loss_fn to a parent's
        assert main(["train", *base, "--algorithm", name, "--out", str(tmp_path / name)]) == 0, \
            capsys.readouterr().err
        assert "validation: loss" in capsys.readouterr().out
