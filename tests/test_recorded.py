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


def test_every_recorded_method_has_its_results_file_and_weights_where_kept():
    for method, stem in recorded.METHODS.items():
        row = recorded.run(method)
        assert row.method == method and row.source == f"cpu-{stem}.json" and len(row.scores) == row.episodes == 600
    loaded = recorded.model("MAML")
    assert loaded.path.name == "cpu-maml.pt" and loaded.step == recorded.run("MAML").provenance["steps"]


def test_seeds_are_those_recorded_for_every_method_asked(tmp_path, monkeypatch):
    results = tmp_path / "results"
    (results / "seeds").mkdir(parents=True)
    source = recorded.run("MAML")
    payload = {"row": {k: getattr(source, k) for k in ("method", "dataset", "accuracy", "ci95", "episodes", "train_s",
                                                        "memory_bytes", "meta_learned", "per_task")},
               "provenance": source.provenance, "scores": source.scores}
    files = ["cpu-maml.json", "cpu-anil.json", "seeds/cpu-maml-seed1.json", "seeds/cpu-maml-seed2.json",
             "seeds/cpu-anil-seed2.json", "seeds/cpu-anil-seed12.json.bak"]
    for name in files:
        method = "ANIL" if "anil" in name else "MAML"
        (results / name).write_text(json.dumps({**payload, "row": {**payload["row"], "method": method}}))
    monkeypatch.setattr(recorded, "RESULTS", results)
    assert list(recorded.by_seed(["MAML"])) == [0, 1, 2]
    assert list(recorded.by_seed(["MAML", "ANIL"])) == [0, 2]  # seed 1 lacks ANIL
    assert recorded.run("ANIL", seed=2).source == "cpu-anil-seed2.json"
    (results / "seeds" / "cpu-anil-seed2.json").write_text(json.dumps(payload))  # a MAML run under ANIL's name
    with pytest.raises(ResultsError, match="holds a run of 'MAML', not 'ANIL'"):
        recorded.run("ANIL", seed=2)


def test_unknown_or_missing_recorded_runs_name_the_fix():
    with pytest.raises(ResultsError, match="the recorded methods are MAML"):
        recorded.run("maml")
    with pytest.raises(ResultsError, match="SEED=7 bash benchmarks/cpu_comparison.sh protonet"):
        recorded.run("ProtoNet", seed=7)
    with pytest.raises(ResultsError, match="no weights of 'in-context'"):
        recorded.model("in-context")


def test_the_recording_script_knows_every_recorded_method():
    import re
    from pathlib import Path

    script = (Path(recorded.RESULTS).parent / "benchmarks" / "cpu_comparison.sh").read_text()
    extra = script[script.index("declare -A EXTRA=("):]
    extra = extra[:extra.index("\n)\n")]
    assert sorted(re.findall(r"^\s*\[([\w-]+)\]=", extra, re.M)) == sorted(recorded.METHODS.values())
