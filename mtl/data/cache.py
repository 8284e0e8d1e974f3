"""Where data is found and cached, and atomic cache files.

- Data root: the ``root`` argument, else env var ``MTL_DATA``, else ``data/`` of the repository
  (``~/.cache/mtl/data`` when mtl is not run from a checkout): never a folder outside the clone.
- Cache folder: the ``cache_dir`` argument, else env var ``MTL_CACHE``, else ``data/cache/`` of the
  repository (``~/.cache/mtl`` when mtl is not run from a checkout).
- Cache files are ``torch.save`` dicts written by ``mtl.io.atomic_save`` (a temporary file renamed
  into place), so an interrupted build never leaves a file that later loads.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mtl.errors import ConfigError, DataError
from mtl.io import atomic_save, remove_stale_temporaries  # noqa: F401  (re-exported for the loaders)

#: bump when the content of cache files changes; older files are rebuilt.
CACHE_VERSION = 1

_REPO = Path(__file__).resolve().parents[2]


def _in_checkout() -> bool:
    return (_REPO / "pyproject.toml").is_file()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder dataset files are looked for (and Omniglot downloaded) in: ``root``, else
    ``$MTL_DATA``, else ``<repo>/data`` (``~/.cache/mtl/data`` outside a checkout)."""
    value = root if root is not None else os.environ.get("MTL_DATA")
    if value:
        return Path(value).expanduser()
    return _REPO / "data" if _in_checkout() else Path.home() / ".cache" / "mtl" / "data"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder (``path``, else ``$MTL_CACHE``, else ``<repo>/data/cache``); not created."""
    value = path if path is not None else os.environ.get("MTL_CACHE")
    if value:
        return Path(value).expanduser()
    return _REPO / "data" / "cache" if _in_checkout() else Path.home() / ".cache" / "mtl"


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
