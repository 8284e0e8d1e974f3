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
    repo = Path(cache.__file__).resolve().parents[2]
    assert cache.data_root() == repo / "data"  # the clone's own folder, never one beside it
    assert cache.cache_dir() == repo / "data" / "cache"


def test_a_killed_write_leaves_nothing_behind_on_the_next_run(tmp_path):
    import os
    import time

    from mtl.data.cache import atomic_save

    old = tmp_path / ".x.pt.abc123.tmp"
    old.write_bytes(b"half a file")
    stale = time.time() - 3600
    os.utime(old, (stale, stale))
    fresh = tmp_path / ".x.pt.def456.tmp"  # a writer still at work: left alone
    fresh.write_bytes(b"")
    atomic_save({"a": 1}, tmp_path / "x.pt")
    assert not old.exists() and fresh.exists()


def test_bad_image_size_and_unwritable_cache_are_refused_before_decoding(tmp_path):
    import pytest

    from mtl.data import cache, omniglot
    from mtl.errors import ConfigError, DataError

    for size in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="image size"):
            omniglot.prepare(cache_dir=tmp_path, image_size=size, download=False)
    blocker = tmp_path / "a-file"  # a folder that cannot exist, even for root
    blocker.write_text("")
    with pytest.raises(DataError, match="MTL_CACHE"):
        cache.ensure_writable(blocker / "cache" / "omniglot.pt")
    with pytest.raises(DataError, match="cannot write the cache"):
        omniglot.prepare(cache_dir=blocker / "cache", download=False)
