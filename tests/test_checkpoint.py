"""Checkpoints: atomic writes, weights_only loads, clear errors, every RNG state restored."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from mtl.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from mtl.errors import CheckpointError


def _payload(step: int = 3) -> dict:
    model = nn.Linear(3, 2)
    return {"config": {"algorithm": "maml"}, "step": step, "learner": model.state_dict(),
            "optimizer": torch.optim.Adam(model.parameters()).state_dict(), "rng": capture_rng()}


def test_round_trip_keeps_tensors_and_values(tmp_path):
    payload = _payload()
    save_checkpoint(tmp_path / "last.pt", payload)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["step"] == 3 and loaded["config"] == {"algorithm": "maml"}
    for name, tensor in payload["learner"].items():
        assert torch.equal(loaded["learner"][name], tensor)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint(target, _payload(step=1))
    before = target.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, _payload(step=2))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_names_the_fix(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload())
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not torch" * 50, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert "train again" in str(info.value)


def test_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an mtl checkpoint"):
        load_checkpoint(path)


def test_pickled_code_is_never_run(tmp_path):
    class Payload:  # not a plain value: weights_only refuses to build it
        def __reduce__(self):
            return (print, ("this must not run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "mtl-checkpoint", "version": 1, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="never runs code from a checkpoint") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)  # never advise the unsafe way round


def test_missing_file_and_folder_say_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


class _Sampler:
    def __init__(self):
        self.generator = torch.Generator().manual_seed(5)


class _Wrapper:  # a hard-task style wrapper that holds the real sampler
    def __init__(self, sampler):
        self.sampler = sampler


class _Learner(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.body.tie_breaker = torch.Generator().manual_seed(9)


def _draws(sampler, learner):
    return (torch.rand(3).tolist(), random.random(), float(np.random.rand()),
            torch.rand(2, generator=sampler.generator).tolist(),
            torch.rand(2, generator=learner.body.tie_breaker).tolist())


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    sampler, learner = _Sampler(), _Learner()
    state = capture_rng(_Wrapper(sampler), learner)
    assert set(state["generators"]) == {"sampler.sampler.generator", "learner.body.tie_breaker"}
    save_checkpoint(tmp_path / "c.pt", {"config": {}, "step": 0, "learner": {}, "rng": state})
    expected = _draws(sampler, learner)
    fresh_sampler, fresh_learner = _Sampler(), _Learner()
    torch.manual_seed(123), random.seed(1), np.random.seed(2)  # scramble the global states
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"], _Wrapper(fresh_sampler), fresh_learner)
    assert _draws(fresh_sampler, fresh_learner) == expected


def test_restoring_into_a_different_setup_is_refused():
    state = capture_rng(_Sampler(), None)
    with pytest.raises(CheckpointError, match="random generators"):
        restore_rng(state, None, _Learner())


def test_python_state_survives_pickle_free_encoding():
    random.seed(7)
    state = capture_rng()
    first = random.random()
    random.seed(8)
    restore_rng(state)
    assert random.random() == first
    pickle.dumps(state)  # plain values only


def test_a_checkpoint_that_does_not_fit_names_the_tensors(tmp_path):
    from mtl.engine.checkpoint import load_learner_state
    from mtl.models import Conv4

    small, big = Conv4(1, 5, hidden=4, image_size=16), Conv4(1, 5, hidden=8, image_size=16)
    with pytest.raises(CheckpointError, match=r"shape of features\.0\.0\.weight \(4, 1, 3, 3\) in the file"):
        load_learner_state(big, small.state_dict(), tmp_path / "x.pt")


def test_rotation_keeps_the_last_checkpoints_and_always_a_whole_last_pt(tmp_path):
    from mtl.engine.checkpoint import BEST, LAST, is_checkpoint_name, write_checkpoint

    for step in range(1, 6):
        write_checkpoint(tmp_path, LAST, {"format": "mtl-checkpoint", "version": 1, "config": {},
                                          "step": step, "learner": {}}, keep=3)
        assert load_checkpoint(tmp_path / LAST)["step"] == step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-1.pt", "last-2.pt", LAST]
    assert [load_checkpoint(tmp_path / f"last-{i}.pt")["step"] for i in (1, 2)] == [4, 3]
    write_checkpoint(tmp_path, BEST, _payload(step=9), keep=3)  # best.pt is never rotated
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST, "last-1.pt", "last-2.pt", LAST]
    assert all(is_checkpoint_name(n) for n in (LAST, BEST, "last-2.pt")) and not is_checkpoint_name("last-0.pt")
    with pytest.raises(CheckpointError, match="keep must be"):
        write_checkpoint(tmp_path, LAST, _payload(), keep=0)
    with pytest.raises(CheckpointError, match="not a checkpoint name"):
        write_checkpoint(tmp_path, "weights.pt", _payload())


def test_a_run_folder_with_rotated_checkpoints_is_mtl_s_own(tmp_path):
    from mtl.engine.rundir import written_by_mtl

    for name in ("last-1.pt", "last-12.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert written_by_mtl(tmp_path / "last-12.pt") and not written_by_mtl(tmp_path / "notes.txt")


def test_checkpoints_and_downloads_share_the_one_atomic_write(tmp_path, monkeypatch):
    """Checkpoints, the Omniglot download and the benchmark's JSON are written by mtl.io.atomic_write."""
    import hashlib
    import importlib.util
    from pathlib import Path

    from mtl import io
    from mtl.data import archives

    written = []
    real = io.atomic_write

    def spy(path, write):
        written.append(Path(path).name)
        return real(path, write)

    monkeypatch.setattr(io, "atomic_write", spy)
    monkeypatch.setattr(archives, "atomic_write", spy)
    save_checkpoint(tmp_path / "last.pt", _payload())

    body = b"archive bytes"
    source = tmp_path / "source.zip"
    source.write_bytes(body)
    archives.download(source.as_uri(), tmp_path / "images.zip", md5=hashlib.md5(body).hexdigest(),
                      progress=False)
    assert (tmp_path / "images.zip").read_bytes() == body

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_core", root / "benchmarks" / "core.py")
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)
    core._write(tmp_path / "core.json", {"rows": []})
    assert written == ["last.pt", "images.zip", "core.json"]
