"""Finding a dataset's files under a data root: archives (.tar.gz/.tgz/.tar/.zip) or unpacked folders."""
from __future__ import annotations

from pathlib import Path

_FORMS = ("", ".tar.gz", ".tgz", ".tar", ".zip")


def find_source(folders: list[Path | None], stem: str) -> Path | None:
    """The first of ``<folder>/<stem>`` (a folder) or ``<folder>/<stem>.{tar.gz,tgz,tar,zip}`` that exists."""
    for folder in folders:
        if folder is None:
            continue
        for suffix in _FORMS:
            candidate = folder / f"{stem}{suffix}"
            if (candidate.is_dir() if not suffix else candidate.is_file()):
                return candidate
    return None
