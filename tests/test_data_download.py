"""Omniglot's download, for real over HTTP from a mirror on 127.0.0.1 (``MTL_OMNIGLOT_URL``): success,
a checksum mismatch, a transfer cut short, a server that stops answering, no server at all. Each
failure leaves nothing in the data folder and says what to do."""
from __future__ import annotations

import hashlib
import socket
import time

import pytest

from archive_helpers import write_archive
from mirror import serve
from mtl.data import archives, load_dataset, omniglot
from mtl.errors import ChecksumError, ConfigError, DataError
from test_data_omniglot import _members


@pytest.fixture
def mirror(tmp_path, make_png, monkeypatch):
    """Tiny Omniglot zips (3 + 2 characters x 2 drawers) in a folder to serve, their md5 as the known ones."""
    monkeypatch.setattr(omniglot, "PARTS", {"images_background": 3, "images_evaluation": 2})
    monkeypatch.setattr(omniglot, "DRAWERS", 2)
    monkeypatch.setattr(archives, "DOWNLOAD_TIMEOUT", 1.0)
    folder = tmp_path / "mirror"
    checksums = {}
    for part in omniglot.PARTS:
        path = write_archive(folder / f"{part}.zip", _members(part, make_png))
        checksums[part] = {".zip": ("md5", hashlib.md5(path.read_bytes()).hexdigest())}
    monkeypatch.setattr(omniglot, "CHECKSUMS", checksums)
    return folder


def _load(tmp_path):
    return load_dataset("omniglot", "all", root=tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)


def _assert_nothing_kept(tmp_path):
    assert not (tmp_path / "data").exists(), sorted((tmp_path / "data").rglob("*"))
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_download_from_the_mirror_lands_in_the_data_folder(mirror, tmp_path, monkeypatch):
    with serve(mirror) as base:
        monkeypatch.setenv("MTL_OMNIGLOT_URL", base + "/{part}.zip")
        ds = _load(tmp_path)
    assert ds.images.shape == (5, 2, 1, 28, 28)
    downloaded = sorted(p.name for p in (tmp_path / "data" / "omniglot").iterdir())
    assert downloaded == ["images_background.zip", "images_evaluation.zip"]  # no .part left
    for name in downloaded:
        assert (tmp_path / "data" / "omniglot" / name).read_bytes() == (mirror / name).read_bytes()


def test_checksum_mismatch_keeps_nothing(mirror, tmp_path, monkeypatch):
    monkeypatch.setitem(omniglot.CHECKSUMS, "images_background", {".zip": ("md5", "0" * 32)})
    with serve(mirror) as base:
        monkeypatch.setenv("MTL_OMNIGLOT_URL", base + "/{part}.zip")
        with pytest.raises(ChecksumError, match=r"expected 0{32}; it was deleted\. Try again later.*omniglot/"):
            _load(tmp_path)
    _assert_nothing_kept(tmp_path)


def test_transfer_cut_short_keeps_nothing(mirror, tmp_path, monkeypatch):
    size = (mirror / "images_background.zip").stat().st_size
    with serve(mirror, fault="truncate") as base:
        monkeypatch.setenv("MTL_OMNIGLOT_URL", base + "/{part}.zip")
        with pytest.raises(DataError, match=rf"cut short after {size // 2} of {size} bytes; nothing was kept\. "
                                            r"Try again\. Put .*omniglot/"):
            _load(tmp_path)
    _assert_nothing_kept(tmp_path)


def test_server_that_stops_answering_times_out_and_keeps_nothing(mirror, tmp_path, monkeypatch):
    with serve(mirror, fault="silent") as base:
        monkeypatch.setenv("MTL_OMNIGLOT_URL", base + "/{part}.zip")
        start = time.monotonic()
        with pytest.raises(DataError, match=r"stopped answering for 1 s; nothing was kept\. Try again later\. "
                                            r"Put .*omniglot/"):
            _load(tmp_path)
        assert time.monotonic() - start < 10
    _assert_nothing_kept(tmp_path)


def test_no_server_says_where_to_put_the_files(mirror, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MTL_OMNIGLOT_URL", f"http://127.0.0.1:{port}/{{part}}.zip")
    with pytest.raises(DataError, match=r"Could not download .*Put images_background .*omniglot/"):
        _load(tmp_path)
    _assert_nothing_kept(tmp_path)


def test_a_file_missing_on_the_mirror_keeps_nothing(mirror, tmp_path, monkeypatch):
    (mirror / "images_background.zip").unlink()
    with serve(mirror) as base:
        monkeypatch.setenv("MTL_OMNIGLOT_URL", base + "/{part}.zip")
        with pytest.raises(DataError, match=r"Could not download .*404"):
            _load(tmp_path)
    _assert_nothing_kept(tmp_path)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/omniglot.zip", "http://127.0.0.1:1/{part}.rar"])
def test_a_bad_mirror_setting_names_the_fix(tmp_path, monkeypatch, url):
    monkeypatch.setenv("MTL_OMNIGLOT_URL", url)
    with pytest.raises(ConfigError, match="MTL_OMNIGLOT_URL"):
        _load(tmp_path)
    _assert_nothing_kept(tmp_path)


def test_the_real_archives_download_and_verify(omniglot_sources, tmp_path, monkeypatch):
    """The repacked .tar.gz archives (6 MB) served as they are: checked against their known sha256."""
    folders = {source.parent for source in omniglot_sources.values()}
    if len(folders) != 1 or not all(s.name.endswith(".tar.gz") for s in omniglot_sources.values()):
        pytest.skip(f"the real Omniglot here is not the two .tar.gz repacks in one folder: {omniglot_sources}")
    with serve(folders.pop()) as base:
        monkeypatch.setenv("MTL_OMNIGLOT_URL", base + "/{part}.tar.gz")
        found = omniglot.find_sources(root=tmp_path / "data", cache=tmp_path / "cache", progress=False)
    for part, path in found.items():
        assert path == tmp_path / "data" / "omniglot" / f"{part}.tar.gz"
        assert path.read_bytes() == omniglot_sources[part].read_bytes()
