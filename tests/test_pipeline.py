"""The meta-transfer pipeline end to end on real Omniglot, at toy scale: every stage runs through the
engine, every learner is scored on the same episodes, finished stages are reused, bad input is refused."""
from __future__ import annotations

import json

import pytest

from mtl.errors import MTLError
from mtl.course.pipeline import PROFILES, run_pipeline

TINY = dict(
    episodes=10,
    pretrain=dict(iterations=4, val_every=4, val_episodes=5, meta_batch=16),
    meta=dict(iterations=2, val_every=2, val_episodes=5, inner_steps=2, test_inner_steps=2, meta_batch=2),
)


@pytest.fixture
def omniglot_env(omniglot_cache, monkeypatch):
    monkeypatch.setenv("MTL_CACHE", str(omniglot_cache))


def test_cpu_pipeline_runs_every_stage_and_scores_all_on_the_same_episodes(omniglot_env, tmp_path):
    results = run_pipeline("cpu", out=tmp_path, progress=False, **TINY)

    assert PROFILES["cpu"]["ablation"]  # the HT ablation is part of the CPU profile
    assert list(results["stages"]) == ["pretrain", "mtl+ht", "mtl"]
    assert set(results["test"]) == {"mtl+ht", "mtl", "nearest-centroid", "linear-probe", "finetune-head"}
    for name, score in results["test"].items():
        assert score["n"] == 10, name
        assert 0.0 <= score["mean"] <= 1.0, name
    assert results["stages"]["pretrain"]["steps"] == 4 and results["stages"]["mtl+ht"]["steps"] == 2
    assert json.loads((tmp_path / "results-cpu.json").read_text())["test"] == results["test"]
    for stage in ("pretrain", "mtl-ht-5w1s", "mtl-5w1s"):
        assert (tmp_path / stage / "last.pt").is_file() and (tmp_path / stage / "summary.json").is_file()

    # a second call reuses the finished stages (same summaries, nothing retrained) and the same episodes
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/last.pt")}
    again = run_pipeline("cpu", out=tmp_path, progress=False, **TINY)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/last.pt")} == stamps
    assert again["stages"] == results["stages"]
    assert again["test"]["nearest-centroid"]["mean"] == results["test"]["nearest-centroid"]["mean"]


def test_unknown_profile_names_the_choices(tmp_path):
    with pytest.raises(MTLError, match="unknown profile 'cpu-fast'.*cpu"):
        run_pipeline("cpu-fast", out=tmp_path)
