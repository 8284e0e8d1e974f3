"""Safe archives: checksums, path traversal, links, truncation and corruption, verified downloads."""
from __future__ import annotations

import hashlib
import tarfile

import pytest

from archive_helpers import write_archive
from mtl.data import archives
from mtl.errors import ChecksumError, DataError, UnsafeArchiveError


def test_digests_match_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"omniglot" * 100_000)
    assert archives.file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert archives.file_digest(path, "md5") == hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_read_a_good_archive_and_its_unpacked_folder(tmp_path, suffix):
    members = {"top/a.txt": b"alpha", "top/sub/b.txt": b"beta", "./top/c.txt": b"gamma"}
    source = write_archive(tmp_path / f"good{suffix}", members)
    assert dict(archives.iter_files(source)) == {"top/a.txt": b"alpha", "top/sub/b.txt": b"beta", "top/c.txt": b"gamma"}
    assert archives.list_names(source) == ["top/a.txt", "top/sub/b.txt", "top/c.txt"]
    target = tmp_path / "out"
    for name, data in archives.iter_files(source):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(data)
    assert dict(archives.iter_files(target / "top")) == {"top/a.txt": b"alpha", "top/c.txt": b"gamma",
                                                         "top/sub/b.txt": b"beta"}


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt", "C:/evil.txt", "..\\evil.txt"])
@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_traversal_members_are_refused(tmp_path, suffix, name):
    source = write_archive(tmp_path / f"bad{suffix}", {"fine.txt": b"x", name: b"evil"})
    with pytest.raises(UnsafeArchiveError, match="outside the target folder"):
        list(archives.iter_files(source))
    with pytest.raises(UnsafeArchiveError, match="outside the target folder"):
        archives.list_names(source)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path, kind):
    source = write_archive(tmp_path / "links.tar.gz", {"a.txt": b"x"}, links={"link": (kind, "/etc/passwd")})
    with pytest.raises(UnsafeArchiveError, match="link"):
        list(archives.iter_files(source))


def test_zip_symlinks_are_refused(tmp_path):
    source = write_archive(tmp_path / "links.zip", {"a.txt": b"x"}, links={"link": "../../etc/passwd"})
    with pytest.raises(UnsafeArchiveError, match="link"):
        list(archives.iter_files(source))


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_truncated_and_corrupted_archives(tmp_path, suffix):
    good = write_archive(tmp_path / f"good{suffix}", {f"f{i}.bin": bytes(range(256)) * 200 for i in range(5)})
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    corrupted = tmp_path / f"corrupted{suffix}"
    corrupted.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:400]) + data[400:])
    for bad in (truncated, corrupted):
        with pytest.raises(DataError, match="truncated or corrupted"):
            list(archives.iter_files(bad))


def test_download_verifies_and_keeps_nothing_on_mismatch(tmp_path):
    served = tmp_path / "served.zip"
    served.write_bytes(b"payload" * 1000)
    url = served.as_uri()
    dest = tmp_path / "downloads" / "file.zip"
    with pytest.raises(ChecksumError, match="deleted"):
        archives.download(url, dest, md5="0" * 32, progress=False)
    assert not dest.parent.exists()  # nothing kept, not even the folder made for it
    good_md5 = hashlib.md5(served.read_bytes()).hexdigest()
    good_sha = hashlib.sha256(served.read_bytes()).hexdigest()
    kept = archives.download(url, dest, md5=good_md5, sha256=good_sha, progress=False)
    assert kept.read_bytes() == served.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["file.zip"]


def test_download_failure_says_where_to_put_the_file(tmp_path):
    with pytest.raises(DataError, match="put it in FOLDER"):
        archives.download((tmp_path / "absent.zip").as_uri(), tmp_path / "d" / "x.zip", progress=False,
                          hint="put it in FOLDER")
    assert not (tmp_path / "d").exists()  # nothing kept, not even the folder made for it
