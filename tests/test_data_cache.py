"""Cache files: atomic writes, unreadable or outdated files, where the cache lives."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl.data import cache
from mtl.errors import DataError


def _payload(value: int) -> dict:
    return {"version": cache.CACHE_VERSION, "images": torch.full((3, 4), value, dtype=torch.uint8)}


def test_roundtrip_is_memory_mapped(tmp_path):
    path = cache.atomic_save(_payload(7), tmp_path / "sub" / "x.pt")
    content = cache.load_cache(path)
    assert content["images"].dtype == torch.uint8 and int(content["images"].sum()) == 7 * 12
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left


def test_interrupted_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = cache.atomic_save(_payload(1), tmp_path / "x.pt")

    def interrupted_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        cache.atomic_save(_payload(2), path)
    with pytest.raises(KeyboardInterrupt):
        cache.atomic_save(_payload(3), tmp_path / "new.pt")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]
    assert int(cache.load_cache(path)["images"][0, 0]) == 1


def test_unreadable_cache_names_the_fix(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="Delete it"):
        cache.load_cache(path)


def test_missing_or_outdated_cache_is_rebuilt(tmp_path):
    assert cache.load_cache(tmp_path / "absent.pt") is None
    stale = cache.atomic_save({"version": cache.CACHE_VERSION - 1, "images": torch.zeros(1)}, tmp_path / "s.pt")
    assert cache.load_cache(stale) is None


def test_locations_follow_arguments_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("MTL_DATA", str(tmp_path / "env-data"))
    assert cache.cache_dir() == tmp_path / "env-cache"
    assert cache.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert cache.data_root() == tmp_path / "env-data"
    monkeypatch.delenv("MTL_CACHE")
    monkeypatch.delenv("MTL_DATA")
    assert cache.data_root() is None
    assert cache.cache_dir() == Path(cache.__file__).resolve().parents[2] / "data" / "cache"
