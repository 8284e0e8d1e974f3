"""Recorded lesson outputs (``mtl.course.stored``): each is the committed output of the cell that replays
it, and a replay produces those outputs again."""
from __future__ import annotations

import json

import pytest

from mtl.course import stored
from mtl.errors import MTLError

KEYS = sorted(p.stem for p in stored.FOLDER.glob("*.json"))


def test_there_are_recordings():
    assert "02_tasks_and_episodes.mini-imagenet-episode" in KEYS


@pytest.mark.parametrize("key", KEYS)
def test_recording_is_the_cells_committed_output(key):
    assert stored.cell_outputs(key) == json.loads(stored.path(key).read_text()), (
        f"the lesson's output changed: run python -c \"from mtl.course import stored; stored.record('{key}')\" "
        "after re-executing the lesson with the dataset")


@pytest.mark.parametrize("key", KEYS)
def test_replay_shows_the_recorded_text_and_figures(key, capsys, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda data, raw, metadata: shown.append(data))
    stored.replay(key)
    outputs = json.loads(stored.path(key).read_text())
    streams = "".join("".join(o["text"]) for o in outputs if o["output_type"] == "stream" and o["name"] == "stdout")
    assert capsys.readouterr().out == streams
    figures = [o["data"] for o in outputs if o["output_type"] != "stream"]
    assert shown == [{k: "".join(v) if isinstance(v, list) else v for k, v in f.items()} for f in figures]


def test_a_missing_recording_names_the_fix():
    with pytest.raises(MTLError, match="no recorded output"):
        stored.replay("00_start_here.nothing")
