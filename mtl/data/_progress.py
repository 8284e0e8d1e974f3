"""The one progress switch: ``progress=False``, or env var ``MTL_PROGRESS`` set to 0/false/no/off.

Every bar of mtl (data decoding, training, pre-training, evaluation, lessons) asks
:func:`progress_enabled`, so one setting silences them all.
"""
from __future__ import annotations

import os
from typing import Iterable, TypeVar

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
