"""Archives and checksums: read and list ``.tar(.gz)``/``.zip`` files (or unpacked folders) safely; download.

Every member name is checked before anything is read or written: absolute paths, ``..`` components,
symbolic/hard links and device files are refused with :class:`~mtl.errors.UnsafeArchiveError`, so
nothing can land outside the target folder. A truncated or corrupted archive raises
:class:`~mtl.errors.DataError`; a download whose checksum does not match raises
:class:`~mtl.errors.ChecksumError` and keeps nothing of the file.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from tqdm.utils import CallbackIOWrapper

from mtl.io import atomic_write, progress_bar
from mtl.errors import ChecksumError, DataError, UnsafeArchiveError

_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)
_CHUNK = 1 << 20
#: seconds a download waits for the server before giving up
DOWNLOAD_TIMEOUT = 30.0
#: the largest member read into memory: the datasets' members are images and CSV files of a few MB
MAX_MEMBER_BYTES = 64 << 20


def _check_size(name: str, size: int, archive: str | os.PathLike) -> None:
    """`DataError` before a member that claims more than `MAX_MEMBER_BYTES` is read."""
    if size > MAX_MEMBER_BYTES:
        raise DataError(
            f"{archive}: member {name!r} claims {size:,} bytes, more than the {MAX_MEMBER_BYTES:,} "
            "mtl reads for one image or CSV file. The archive is not a genuine copy: delete it and "
            "use the official file."
        )


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest (``sha256`` or ``md5``) of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_member_name(name: str, archive: str | os.PathLike = "archive") -> str:
    """Normalised relative POSIX name of a member, or :class:`UnsafeArchiveError` if it could escape."""
    clean = name.replace("\\", "/")
    parts = [p for p in PurePosixPath(clean).parts if p not in ("", ".")]
    if clean.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} would be written outside the target folder (absolute path or "
            "'..'). The archive is not a genuine copy: delete it and use the official file."
        )
    return "/".join(parts)


def _refuse_link(name: str, archive: str | os.PathLike) -> None:
    raise UnsafeArchiveError(
        f"{archive}: member {name!r} is a link or special file, which could point outside the target "
        "folder. The archive is not a genuine copy: delete it and use the official file."
    )


def _corrupt(path: str | os.PathLike, exc: BaseException) -> DataError:
    return DataError(
        f"{path} is truncated or corrupted ({type(exc).__name__}: {exc}). Delete it and copy or "
        "download it again."
    )


def _iter_tar(path: Path, keep: Callable[[str], bool], progress: bool) -> Iterator[tuple[str, bytes | None]]:
    with open(path, "rb") as raw, progress_bar(total=path.stat().st_size, unit="B", unit_scale=True,
                                               desc=f"reading {path.name}", progress=progress) as bar, \
            tarfile.open(fileobj=CallbackIOWrapper(bar.update, raw, "read"), mode="r|*") as tar:
        for member in tar:
            name = safe_member_name(member.name, path)
            if member.isdir():
                continue
            if not member.isfile():
                _refuse_link(member.name, path)
            if not keep(name):
                yield name, None
                continue
            _check_size(member.name, member.size, path)
            data = tar.extractfile(member).read(member.size)
            if len(data) != member.size:
                raise EOFError(f"member {member.name!r} is cut short")
            yield name, data


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 in (0o120000, 0o020000, 0o060000, 0o010000)


def _iter_zip(path: Path, keep: Callable[[str], bool], progress: bool) -> Iterator[tuple[str, bytes | None]]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = safe_member_name(info.filename, path)
            if info.is_dir():
                continue
            if _zip_is_link(info):
                _refuse_link(info.filename, path)
            if not keep(name):
                yield name, None
                continue
            _check_size(info.filename, info.file_size, path)
            with archive.open(info) as member:  # reads at most the declared size (CRC-checked)
                data = member.read(MAX_MEMBER_BYTES + 1)
            if len(data) > MAX_MEMBER_BYTES:
                _check_size(info.filename, len(data), path)
            yield name, data


def _iter_folder(path: Path, keep: Callable[[str], bool], progress: bool) -> Iterator[tuple[str, bytes | None]]:
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for filename in sorted(filenames):
            full = Path(dirpath) / filename
            name = (Path(path.name) / full.relative_to(path)).as_posix()
            if not keep(name):
                yield name, None
                continue
            _check_size(name, full.stat().st_size, path)
            yield name, full.read_bytes()


def _keep_all(name: str) -> bool:
    return True


def iter_files(path: str | os.PathLike, keep: Callable[[str], bool] = _keep_all, *, progress: bool = False
               ) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(name, bytes)`` for every regular file of an archive or folder, in stored order.

    Names are relative POSIX paths; a folder's names start with the folder's own name (the layout
    its archive would have). Members for which ``keep(name)`` is false are not read (``bytes`` is
    None). ``progress`` shows a bar of the bytes read (tar archives). Raises
    :class:`UnsafeArchiveError` on an unsafe member and :class:`DataError` on a truncated or
    corrupted archive.
    """
    path = Path(path)
    if path.is_dir():
        yield from _iter_folder(path, keep, progress)
        return
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    reader = _iter_zip if path.name.lower().endswith(".zip") else _iter_tar
    try:
        yield from reader(path, keep, progress)
    except (UnsafeArchiveError, DataError):
        raise
    except _CORRUPT as exc:
        raise _corrupt(path, exc) from exc


def list_names(path: str | os.PathLike) -> list[str]:
    """Names of the regular files of an archive or folder (checked like :func:`iter_files`, not read)."""
    return [name for name, _ in iter_files(path, keep=lambda name: False)]


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def download(url: str, dest: str | os.PathLike, *, md5: str | None = None, sha256: str | None = None,
             progress: bool = True, hint: str = "", timeout: float | None = None) -> Path:
    """Download ``url`` to ``dest`` (atomically, with ``mtl.io.atomic_write``), verifying ``md5``
    and/or ``sha256``.

    The bytes go to a temporary file beside ``dest``, renamed into place only when the transfer is
    complete (as long as the server's Content-Length) and the checksums match. On any failure
    nothing is kept, not even the folders created for ``dest``: a checksum mismatch raises
    :class:`ChecksumError`; a network failure, a transfer cut short or a server silent for
    ``timeout`` seconds (default :data:`DOWNLOAD_TIMEOUT`) raise :class:`DataError`; each message
    ends with ``hint`` (where to put the files instead).
    """
    dest = Path(dest)
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    created = _missing_folders(dest.parent)
    digests = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}

    def fetch(out) -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                received = 0
                with progress_bar(total=total, unit="B", unit_scale=True, desc=dest.name,
                                  progress=progress) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        for digest in digests.values():
                            digest.update(chunk)
                        bar.update(len(chunk))
                        received += len(chunk)
        except TimeoutError as exc:
            raise DataError(f"Could not download {url}: the server stopped answering for {timeout:g} s; "
                            f"nothing was kept. Try again later. {hint}".strip()) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise DataError(f"Could not download {url} ({exc}); nothing was kept. {hint}".strip()) from exc
        if total is not None and received != total:
            raise DataError(f"The download of {url} was cut short after {received} of {total} bytes; "
                            f"nothing was kept. Try again. {hint}".strip())
        for algorithm, expected in (("md5", md5), ("sha256", sha256)):
            actual = digests[algorithm].hexdigest()
            if expected and actual != expected.lower():
                raise ChecksumError(
                    f"The download of {url} has {algorithm} {actual}, expected {expected}; it was "
                    f"deleted. Try again later, or {hint or 'copy the official file by hand'}".strip()
                )

    try:
        return atomic_write(dest, fetch)
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # not empty: something else is in it now
                break
        raise
