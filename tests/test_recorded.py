"""mtl.course.recorded: the lessons' pre-trained backbone, read from results/ or trained."""
from __future__ import annotations

import json

import pytest
import torch

from mtl.course import recorded
from mtl.engine.build import load_learner
from mtl.errors import ResultsError

LESSONS = dict(classes=150, channels=(16, 32, 64, 128), epochs=4, batch_size=64)  # lessons 07-09, CPU profile


def test_the_recorded_backbone_is_the_lessons_config_loaded_weights_only():
    run = recorded.pretrained(recorded.pretrain_config("omniglot", **LESSONS))
    assert run.recorded and run.provenance["command"] and run.provenance["date"] and run.wall_time_s > 0
    kinds = [r["kind"] for r in run.history]
    assert kinds.count("train") == kinds.count("val") == LESSONS["epochs"]
    loaded = load_learner(recorded.WEIGHTS)  # torch.load(weights_only=True) inside
    assert loaded.step == run.provenance["steps"] == loaded.config.iterations
    weights = dict(loaded.learner.model.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in run.backbone.state_dict().items())
    assert not run.backbone.training


def test_another_config_trains_and_is_read_back_from_its_run_folder(tmp_path):
    config = recorded.pretrain_config("omniglot", classes=5, channels=(4, 4, 4, 4), epochs=1, batch_size=32)
    first = recorded.pretrained(config, run_dir=tmp_path / "run")
    assert not first.recorded and first.history and (tmp_path / "run" / "last.pt").is_file()
    again = recorded.pretrained(config, run_dir=tmp_path / "run")  # complete: read back, not retrained
    assert again.wall_time_s == first.wall_time_s
    assert all(torch.equal(a, b) for a, b in zip(first.backbone.state_dict().values(),
                                                  again.backbone.state_dict().values()))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == config.iterations


def test_only_pretraining_configs_are_accepted():
    from mtl.engine.config import TrainConfig

    with pytest.raises(ResultsError, match="pretrain"):
        recorded.pretrained(TrainConfig(algorithm="maml", dataset="omniglot"))
