"""Writing files safely and the progress switch, shared by every layer.

- ``check_output_file`` / ``check_output_folder``: what a command calls on every output path before
  it computes anything: a file target is absent or a regular file (never a device, FIFO, socket or
  symbolic link), a folder target is absent or a folder, and the location is writable.
- ``atomic_write`` (and ``atomic_save`` / ``atomic_write_text`` over it): the one atomic write of
  mtl: the target is checked as above, the bytes go to a temporary file in the same folder,
  flushed, then ``os.replace``-d over the target: a reader (or a killed writer) sees the old file
  or the new one, never half of one. Caches, checkpoints (``mtl.engine.checkpoint``), downloads,
  run files and result JSON all go through it.
- ``progress_enabled``: ``progress=False``, or env var ``MTL_PROGRESS`` set to 0/false/no/off.
  Every bar of mtl (data decoding, training, pre-training, evaluation, lessons) asks it, so one
  setting silences them all.
"""
from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from mtl.errors import OutputError

from tqdm.auto import tqdm

T = TypeVar("T")


#: values of ``MTL_PROGRESS`` that switch every bar off
OFF = ("0", "false", "no", "off")


def progress_enabled(progress: bool | None = True) -> bool:
    """True when a bar should be shown: asked for (None: by default) and not switched off by
    ``MTL_PROGRESS``."""
    if progress is False:
        return False
    return os.environ.get("MTL_PROGRESS", "1").strip().lower() not in OFF


def progress_bar(iterable: Iterable[T] | None = None, *, progress: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled when :func:`progress_enabled` says so."""
    return tqdm(iterable, disable=not progress_enabled(progress), **kwargs)


def remove_stale_temporaries(folder: str | os.PathLike, name: str, *, older_than_s: float = 600) -> None:
    """Delete what a killed atomic write of ``name`` left in ``folder`` (``.name.*.tmp``).

    Only files untouched for ``older_than_s``: a temporary file lives for the seconds its write
    takes, so a younger one may belong to a writer still at work.
    """
    now = time.time()
    for leftover in Path(folder).glob(f".{name}.*.tmp"):
        try:
            if now - leftover.stat().st_mtime > older_than_s:
                leftover.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def file_kind(mode: int) -> str:
    """A file type in words (what ``stat`` reports)."""
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


def _writable_location(path: Path, what: str) -> None:
    """The nearest existing folder above ``path`` is a folder mtl may write into."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: {parent} is not writable; choose a writable "
                          "location")


def check_output_file(path: str | os.PathLike, what: str = "the file") -> Path:
    """``path`` (``~`` expanded) if mtl may write a file there, else `OutputError` naming the fix.

    Allowed: an absent path in a writable location, or an existing regular file. Refused: a
    symbolic link (even to a regular file: replacing it would cut the link), a device, FIFO,
    socket or folder, and a location that is not a writable folder.
    """
    path = Path(path).expanduser()
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OutputError(f"cannot use {path} as {what} ({exc.strerror or exc}): choose another path") from None
    if mode is not None and stat.S_ISLNK(mode):
        raise OutputError(f"{path} is a symbolic link (to {os.path.realpath(path)}): mtl writes only "
                          f"regular files, never through a link; pass the target path itself or "
                          f"another file name as {what}")
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{path} is a folder: pass a file path for {what}, e.g. {path / 'result.json'}")
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{path} is a {file_kind(mode)}, not a regular file: mtl never writes to one; "
                          f"pass a file path for {what}")
    _writable_location(path, what)
    return path


def check_output_folder(path: str | os.PathLike, what: str = "the output folder") -> Path:
    """``path`` (``~`` expanded) if mtl may create files in it, else `OutputError` naming the fix.

    Allowed: an existing folder (a symbolic link to one included: the user named a folder) that
    is writable, or an absent path in a writable location.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        kind = "a regular file" if path.is_file() else f"a {file_kind(os.stat(path).st_mode)}"
        raise OutputError(f"{path} exists and is {kind}, not a folder: choose another path for {what}")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{path} is not writable: choose a writable location for {what}")
        return path
    if path.is_symlink():
        raise OutputError(f"{path} is a broken symbolic link: remove it or choose another path for {what}")
    _writable_location(path, what)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then ``os.replace`` it over
    ``path`` (checked first with :func:`check_output_file`). Returns the path written.

    A failure (full disk, read-only folder) raises `OutputError` and leaves ``path`` as it was.
    """
    path = check_output_file(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the result is readable like any file
        check_output_file(path)  # still a regular file or absent (nothing swapped in meanwhile)
        os.replace(tmp_name, path)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"could not write {path} ({exc.strerror or exc}); it is left as it was: "
                          "free some space or choose a writable location") from exc
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` with :func:`atomic_write`."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(text.encode()))
