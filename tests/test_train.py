"""The training engine and its CLI on tiny sinusoid runs (a few seconds each on 2 CPU cores)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mtl.engine.checkpoint import load_checkpoint
from mtl.cli import main
from mtl.engine.config import PRESETS, TrainConfig, preset
from mtl.errors import CheckpointError
from mtl.algorithms import Learner, register_algorithm
from mtl.engine.train import RunFolderError, TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "sinusoid", "--algorithm", "maml", "--shots", "5", "--queries", "5",
        "--meta-batch", "4", "--inner-steps", "1", "--inner-lr", "0.01",
        "--val-episodes", "20", "--eval-batch", "10", "--device", "cpu", "--no-progress"]


def _tiny(**overrides) -> TrainConfig:
    values = dict(dataset="sinusoid", algorithm="maml", shots=5, queries=5, meta_batch=4,
                  inner_steps=1, inner_lr=0.01, iterations=20, val_every=10,
                  val_episodes=20, eval_batch=10, log_every=5, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields (the only thing a resumed run may change)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def test_cli_round_trip_train_checkpoint_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--iterations", "12", "--val-every", "6", "--log-every", "3",
                 "--out", str(run)]) == 0
    assert {"config.json", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "summary.json"} <= {
        p.name for p in run.iterdir()}
    config = json.loads((run / "config.json").read_text())
    assert config["iterations"] == 12 and config["test_inner_steps"] == 1
    assert load_checkpoint(run / "last.pt")["step"] == 12
    kinds = [(r["kind"], r["step"]) for r in _rows(run)]
    assert kinds == [("train", 3), ("train", 6), ("val", 6), ("train", 9), ("train", 12), ("val", 12)]
    assert (run / "metrics.csv").read_text().splitlines()[0] == "kind,step,loss,accuracy,ci95,lr,elapsed_s"
    assert len((run / "metrics.csv").read_text().splitlines()) == 7

    out_json = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--episodes", "30", "--seed", "2",
                 "--inner-steps", "3", "--json", str(out_json), "--no-progress"]) == 0
    result = json.loads(out_json.read_text())
    assert result["n"] == 30 and result["inner_steps"] == 3 and result["metric"] == "mse"
    assert len(result["scores"]) == 30 and result["ci95"] > 0
    assert "mse" in capsys.readouterr().out


def test_existing_run_is_never_overwritten_without_asking(tmp_path, capsys):
    run = tmp_path / "run"
    train(_tiny(iterations=5, val_every=5), out=run, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", *TINY, "--iterations", "5", "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    assert main(["train", *TINY, "--iterations", "4", "--val-every", "4", "--out", str(run), "--overwrite"]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 4


def test_overwrite_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(RunFolderError, match="mtl did not write"):
        train(_tiny(), out=tmp_path, overwrite=True, progress=False)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_resume_needs_a_checkpoint_and_an_unwritable_folder_fails_first(tmp_path):
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(_tiny(), out=tmp_path / "empty", resume=True, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunFolderError, match="choose"):
        train(_tiny(), out=blocker / "run", progress=False)


def test_corrupt_checkpoint_is_reported_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    train(_tiny(iterations=5, val_every=5), out=run, progress=False)
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:100])
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="corrupt"):
        train(_tiny(iterations=10), out=run, resume=True, progress=False)
    assert main(["train", "--out", str(run), "--resume", "--iterations", "10", "--no-progress"]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing ran


def test_resume_refuses_changed_settings(tmp_path):
    run = tmp_path / "run"
    train(_tiny(iterations=5, val_every=5), out=run, progress=False)
    with pytest.raises(Exception, match="inner_lr"):
        train(_tiny(iterations=10, inner_lr=0.5), out=run, resume=True, progress=False)


class _Explodes(Learner):
    """A fake algorithm whose meta-loss turns NaN at step ``at``."""

    def __init__(self, model, *, inner_steps, inner_lr, first_order=False, strategy="auto", at=7):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def meta_gradient(self, batch):
        self.calls += 1
        loss = nn.functional.mse_loss(self.model(batch.query_x), batch.query_y)
        if self.calls >= self.at:
            loss = loss * float("nan")
        loss.backward()
        return {"loss": loss.item()}

    def predict(self, batch, *, inner_steps=None):
        return self.model(batch.query_x).detach()


def test_nan_meta_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    register_algorithm("explodes", _Explodes)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"meta-step 7: meta-loss nan.*step 6.*--init") as info:
        train(_tiny(algorithm="explodes", iterations=20, val_every=3, checkpoint_every=3), out=run,
              progress=False)
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["step"] == 6
    good_weights = checkpoint["learner"]
    assert all(torch.isfinite(t).all() for t in good_weights.values())
    assert str(run / "last.pt") in str(info.value)
    # the advice works: a new run starts from those weights with a lower learning rate
    fresh = train(_tiny(iterations=2, val_every=2, meta_lr=1e-4, init=str(run / "last.pt")),
                  out=tmp_path / "again", progress=False)
    assert fresh.steps == 2
    start = {k: v for k, v in good_weights.items()}
    assert load_checkpoint(tmp_path / "again" / "last.pt")["config"]["init"] == str(run / "last.pt")
    assert set(start) == set(fresh.learner.state_dict())


class _Grows(_Explodes):
    def meta_gradient(self, batch):
        self.calls += 1
        loss = nn.functional.mse_loss(self.model(batch.query_x), batch.query_y) * 10.0 ** (2 * self.calls)
        loss.backward()
        return {"loss": loss.item()}


def test_an_exploding_loss_is_divergence_and_a_failed_first_step_leaves_no_folder(tmp_path):
    register_algorithm("grows", _Grows)
    register_algorithm("explodes", _Explodes)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="exploded"):
        train(_tiny(algorithm="grows", iterations=20, val_every=10), out=run, progress=False)
    assert not run.exists(), "no checkpoint was written: the same command can simply be run again"
    with pytest.raises(TrainingDiverged, match="No checkpoint was written yet"):
        train(_tiny(algorithm="explodes", iterations=20, val_every=10), out=run, progress=False)
    assert not run.exists()


def _spawn(run: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, MTL_PROGRESS="0", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "mtl", "train", *TINY, "--iterations", "200", "--val-every", "50",
               "--checkpoint-every", "20", "--log-every", "10", "--threads", "1", "--out", str(run), *extra]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(process: subprocess.Popen, timeout: float = 300) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err.decode()[-2000:]


@pytest.mark.slow  # three short subprocess runs: ~20-40 s on 2 idle cores
def test_resume_after_sigkill_ends_with_identical_metrics(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _wait(_spawn(reference))

    process = _spawn(killed)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it mid-run, once a checkpoint exists
        text = (killed / "metrics.jsonl").read_text() if (killed / "metrics.jsonl").exists() else ""
        if (killed / "last.pt").exists() and '"step": 80' in text:
            break
        assert process.poll() is None, "the run finished before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert 0 < load_checkpoint(killed / "last.pt")["step"] < 200

    _wait(_spawn(killed, "--resume"))
    assert _rows(killed) == _rows(reference)
    final, expected = load_checkpoint(killed / "last.pt"), load_checkpoint(reference / "last.pt")
    assert final["step"] == expected["step"] == 200
    for name, tensor in expected["learner"].items():
        assert torch.equal(final["learner"][name], tensor), name


def test_presets_resolve_and_name_the_paper_protocols():
    for name in PRESETS:
        config = preset(name).resolved()
        assert config.preset == name and config.test_inner_steps >= 0
    assert preset("maml-miniimagenet-5w1s").resolved().test_inner_steps == 10
    assert preset("maml-omniglot-5w1s").resolved().inner_lr == 0.4
    assert preset("maml-omniglot-20w1s").resolved().meta_batch == 16
    with pytest.raises(Exception, match="unknown preset"):
        preset("maml-imagenet")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad", [["--ways", "0"], ["--algorithm", "mamll"], ["--device", "mps"],
                                 ["--inner-lr", "-0.1"], ["--time-budget", "-5"],
                                 ["--checkpoint-every", "0"], ["--test-inner-steps", "-1"]])
def test_a_refused_overwrite_leaves_the_old_run_byte_for_byte(tmp_path, capsys, bad):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--iterations", "4", "--val-every", "4", "--out", str(run)]) == 0
    before = _snapshot(run)
    code = main(["train", *TINY, "--iterations", "4", "--out", str(run), "--overwrite", *bad])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert _snapshot(run) == before


def test_no_gpu_refused_before_any_file_is_touched(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = tmp_path / "run"
    assert main(["train", *TINY, "--iterations", "4", "--val-every", "4", "--out", str(run)]) == 0
    before = _snapshot(run)
    assert main(["train", *TINY, "--out", str(run), "--overwrite", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and _snapshot(run) == before
    fresh = tmp_path / "fresh"
    assert main(["train", *TINY, "--out", str(fresh), "--device", "cuda"]) == 2
    assert not fresh.exists(), "a refused start leaves no empty folder"


def test_an_overwrite_that_fails_before_its_first_checkpoint_restores_the_old_run(tmp_path):
    run = tmp_path / "run"
    train(_tiny(iterations=4, val_every=4), out=run, progress=False)
    before = _snapshot(run)

    class Boom(Learner):
        def __init__(self, model, **_):
            super().__init__()
            self.model = model

        def meta_gradient(self, batch):
            raise RuntimeError("failed at the first step")

    register_algorithm("boom", Boom)
    with pytest.raises(RuntimeError, match="first step"):
        train(_tiny(algorithm="boom", iterations=4, val_every=4), out=run, overwrite=True,
              progress=False)
    assert _snapshot(run) == before
    train(_tiny(iterations=4, val_every=2), out=run, overwrite=True, progress=False)
    assert not (run / ".replaced-run").exists() and _snapshot(run) != before


def test_auto_on_a_cpu_is_the_loop_bit_for_bit(tmp_path):
    auto, loop = tmp_path / "auto", tmp_path / "loop"
    train(_tiny(iterations=3, val_every=3, strategy="auto"), out=auto, progress=False)
    train(_tiny(iterations=3, val_every=3, strategy="loop"), out=loop, progress=False)
    assert json.loads((auto / "config.json").read_text())["strategy"] == "auto"
    assert _rows(auto) == _rows(loop)
    weights = [load_checkpoint(run / "last.pt")["learner"] for run in (auto, loop)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
