"""Where data is found and cached, and atomic cache files.

- Data root: the ``root`` argument, else env var ``MTL_DATA`` (the layout of ``/work/shared/data``).
- Cache folder: the ``cache_dir`` argument, else env var ``MTL_CACHE``, else ``data/cache/`` of the
  repository (``~/.cache/mtl`` when mtl is not run from a checkout).
- Cache files are ``torch.save`` dicts written to a temporary file and renamed into place
  (``os.replace``), so an interrupted build never leaves a file that later loads.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtl.errors import ConfigError, DataError

#: bump when the content of cache files changes; older files are rebuilt.
CACHE_VERSION = 1

_REPO = Path(__file__).resolve().parents[2]


def data_root(root: str | os.PathLike | None = None) -> Path | None:
    """The folder to look for dataset files in (``root``, else ``$MTL_DATA``), or None."""
    value = root if root is not None else os.environ.get("MTL_DATA")
    return Path(value).expanduser() if value else None


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder (``path``, else ``$MTL_CACHE``, else ``<repo>/data/cache``); not created."""
    value = path if path is not None else os.environ.get("MTL_CACHE")
    if value:
        return Path(value).expanduser()
    if (_REPO / "pyproject.toml").is_file():
        return _REPO / "data" / "cache"
    return Path.home() / ".cache" / "mtl"


def image_size(size: int | None, default: int) -> int:
    """The image side to build: ``size`` checked (a whole number >= 4), else ``default``."""
    if size is None:
        return default
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise ConfigError(f"image size must be a whole number of pixels >= 4, got {size!r} "
                          f"(--image-size; the default is {default})")
    return size


def ensure_writable(path: str | os.PathLike) -> Path:
    """Check, before any slow decoding, that the cache file ``path`` can be written."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"cannot write the cache in {folder} ({exc.strerror or exc}): point MTL_CACHE "
                        "(or --cache-dir) at a writable folder") from exc
    return Path(path)


def remove_stale_temporaries(folder: str | os.PathLike, name: str, *, older_than_s: float = 600) -> None:
    """Delete what a killed ``atomic_save`` of ``name`` left in ``folder`` (``.name.*.tmp``).

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


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a cache is readable like any file
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path


def load_cache(path: str | os.PathLike) -> dict | None:
    """A cache dict written by :func:`atomic_save`, memory-mapped; None if absent or outdated.

    A file that exists but cannot be read raises :class:`DataError` naming the fix.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        content = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise DataError(
            f"The cache file {path} cannot be read ({exc}). Delete it; it is rebuilt on the next load "
            "(or run `python -m mtl data prepare --force`)."
        ) from exc
    if not isinstance(content, dict) or content.get("version") != CACHE_VERSION:
        return None
    return content
