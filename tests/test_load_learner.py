"""``mtl.engine.build.load_learner``: the one way a checkpoint becomes a learner, for evaluation,
``FewShotClassifier``, ``python -m mtl adapt`` and the course's pipeline."""
from __future__ import annotations

import pytest
import torch

from mtl.engine import build
from mtl.engine.checkpoint import load_checkpoint
from mtl.engine.config import TrainConfig
from mtl.engine.train import train
from mtl.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def run(omniglot_cache, tmp_path_factory):
    """A 2-step MAML run on Omniglot (a narrow Conv4): last.pt and best.pt."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTL_CACHE", str(omniglot_cache))
        patch.setenv("MTL_PROGRESS", "0")
        out = tmp_path_factory.mktemp("runs") / "maml"
        train(TrainConfig(algorithm="maml", dataset="omniglot", iterations=2, meta_batch=2, val_every=1,
                          val_episodes=2, eval_batch=2, hidden=4, device="cpu"), out=out)
    return out


@pytest.fixture
def calls(monkeypatch, omniglot_cache):
    """The paths every call of load_learner received."""
    monkeypatch.setenv("MTL_CACHE", str(omniglot_cache))
    monkeypatch.setenv("MTL_PROGRESS", "0")
    seen = []
    real = build.load_learner

    def spy(path, device="cpu"):
        loaded = real(path, device)
        seen.append(loaded.path.name)
        return loaded

    monkeypatch.setattr(build, "load_learner", spy)
    return seen


def test_load_learner_builds_the_recorded_learner_with_its_weights(run, monkeypatch, omniglot_cache):
    monkeypatch.setenv("MTL_CACHE", str(omniglot_cache))
    loaded = build.load_learner(run, "cpu")
    saved = load_checkpoint(run / "best.pt")
    assert loaded.path == run / "best.pt" and loaded.step == saved["step"]
    assert loaded.config.algorithm == "maml" and loaded.config.test_inner_steps is not None  # resolved
    assert not loaded.learner.training and loaded.device == torch.device("cpu")
    for name, tensor in saved["learner"].items():
        assert torch.equal(loaded.learner.state_dict()[name], tensor), name
    assert build.load_learner(run / "last.pt").step == 2
    with pytest.raises(ConfigError, match="device 'tpu'"):  # the device is checked before the file is read
        build.load_learner(run / "absent.pt", "tpu")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        build.load_learner(run / "absent.pt")


def test_evaluation_loads_through_load_learner(run, calls):
    from mtl.engine.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(run, episodes=2, seed=0, device="cpu", progress=False)
    assert calls == ["best.pt"] and result.protocol["checkpoint_step"] == load_checkpoint(run / "best.pt")["step"]


def test_the_classifier_and_adapt_load_through_load_learner(run, calls, tmp_path, make_png):
    from mtl.cli import main
    from mtl.engine.classifier import FewShotClassifier

    clf = FewShotClassifier.from_checkpoint(run / "last.pt")
    assert calls == ["last.pt"] and clf.config.algorithm == "maml" and clf.device == torch.device("cpu")
    support = tmp_path / "support"
    for label in range(5):
        (support / f"c{label}").mkdir(parents=True)
        (support / f"c{label}" / "1.png").write_bytes(make_png(label * 7))
    query = tmp_path / "q.png"
    query.write_bytes(make_png(3))
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--query", str(query)]) == 0
    assert calls == ["last.pt", "best.pt"]


def test_the_course_pipeline_loads_through_load_learner(calls, tmp_path):
    from mtl.course.pipeline import run_pipeline

    run_pipeline("cpu", out=tmp_path, progress=False, episodes=4,
                 pretrain=dict(iterations=2, val_every=2, val_episodes=2, meta_batch=16),
                 meta=dict(iterations=1, val_every=1, val_episodes=2, inner_steps=1, test_inner_steps=1,
                           meta_batch=1),
                 ablation=False)
    assert calls == ["best.pt"]  # the meta-trained stage, scored from its run folder


def test_exported_weights_load_as_the_run_but_do_not_resume(run, tmp_path, monkeypatch, omniglot_cache):
    from mtl.engine.checkpoint import export_weights

    monkeypatch.setenv("MTL_CACHE", str(omniglot_cache))
    monkeypatch.setenv("MTL_PROGRESS", "0")
    small = export_weights(run / "last.pt", tmp_path / "maml.pt")
    data = torch.load(small, weights_only=True)
    assert set(data) == {"format", "version", "config", "step", "learner"}
    assert small.stat().st_size < (run / "last.pt").stat().st_size
    loaded, original = build.load_learner(small), build.load_learner(run / "last.pt")
    assert loaded.step == original.step == 2
    for name, tensor in original.learner.state_dict().items():
        assert torch.equal(loaded.learner.state_dict()[name], tensor), name
    with pytest.raises(CheckpointError, match="already exists"):  # nothing the user had is replaced unasked
        export_weights(run, small)
    assert export_weights(run, small, force=True) == small  # a run folder: its best.pt
    folder = tmp_path / "resume"
    folder.mkdir()
    (folder / "last.pt").write_bytes(small.read_bytes())
    config = TrainConfig(algorithm="maml", dataset="omniglot", iterations=3, meta_batch=2, val_every=1,
                         val_episodes=2, eval_batch=2, hidden=4, device="cpu")
    with pytest.raises(CheckpointError, match="weights only"):
        train(config, out=folder, resume=True)
    with pytest.raises(CheckpointError, match="being exported"):
        export_weights(small, small, force=True)
