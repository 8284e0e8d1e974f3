"""Progress bars that can be turned off (``progress=False`` or env var ``MTL_PROGRESS=0``)."""
from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(progress: bool = True) -> bool:
    """True when a bar should be shown: asked for and not switched off by ``MTL_PROGRESS=0``."""
    return bool(progress) and os.environ.get("MTL_PROGRESS", "1") != "0"


def progress_bar(iterable: Iterable[T] | None = None, *, progress: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled when :func:`progress_enabled` says so."""
    return tqdm(iterable, disable=not progress_enabled(progress), **kwargs)
