"""The run folder: checked before anything is created, moved or deleted; never loses a run.

``prepare_run_dir`` checks that ``--out`` can be used as asked (a new folder, ``--resume`` of a run
with ``last.pt``, ``--overwrite`` of a folder holding only an mtl run) and creates it. An
overwritten run is moved to ``.replaced-run/`` and stays there until the new run has written its
first checkpoint; ``undo_start`` puts it back if the new run fails before then, and removes a folder
that the failed run created.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from mtl.errors import RunFolderError

#: files a run writes into its folder (``--overwrite`` removes exactly these)
RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "summary.json")
#: where --overwrite keeps the old run until the new one has written its first checkpoint
REPLACED = ".replaced-run"


def prepare_run_dir(out: str | os.PathLike | None, *, resume: bool,
                     overwrite: bool) -> tuple[Path | None, Path | None, bool]:
    """Check (before any training) that the run folder can be used as asked; create it.

    Returns ``(run folder, where an overwritten run was moved aside or None, folder created)``.
    """
    if out is None:
        if resume:
            raise RunFolderError("resume=True needs the run folder: pass out=DIR (--out DIR)")
        return None, None, False
    if resume and overwrite:
        raise RunFolderError("--resume continues a run, --overwrite replaces it: pass only one")
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} exists and is not a folder: choose another --out")
    existing = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if resume:
        if not (run_dir / "last.pt").exists():
            raise RunFolderError(
                f"nothing to resume in {run_dir} (no last.pt): drop --resume to start a new run there"
                + (", with --overwrite to replace what it holds" if existing else "")
            )
    elif existing:
        if not overwrite:
            raise RunFolderError(
                f"{run_dir} already exists and is not empty ({', '.join(existing[:5])}"
                f"{', ...' if len(existing) > 5 else ''}): pass --resume to continue that run, "
                "--overwrite to replace it, or choose another --out"
            )
        foreign = [n for n in existing if n not in RUN_FILES and n != REPLACED
                   and not n.startswith((".last.pt.", ".best.pt.", "eval-"))]
        if foreign:
            raise RunFolderError(
                f"{run_dir} holds files that are not from an mtl run ({', '.join(foreign[:5])}); "
                "--overwrite only replaces run folders: choose another --out"
            )
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunFolderError(f"cannot write to {run_dir} ({exc.strerror or exc}): choose a writable --out") from exc
    aside = None
    if existing and not resume:
        aside = run_dir / REPLACED
        if aside.exists() and not (run_dir / "last.pt").exists():
            _restore(run_dir, aside)  # an earlier replacement was killed before its first checkpoint
            existing = sorted(p.name for p in run_dir.iterdir())
        if aside.exists():
            shutil.rmtree(aside)
        aside.mkdir()
        for name in existing:
            if name != REPLACED:
                (run_dir / name).rename(aside / name)
    return run_dir, aside, created


def _restore(run_dir: Path, aside: Path) -> None:
    """Put the run moved aside by --overwrite back in place of what the new run wrote."""
    for path in run_dir.iterdir():
        if path != aside:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in aside.iterdir():
        path.rename(run_dir / path.name)
    aside.rmdir()


def undo_start(run_dir: Path, aside: Path | None, created: bool) -> None:
    """A run that failed before its first checkpoint leaves the folder as it found it."""
    if (run_dir / "last.pt").exists():
        return  # the new run exists (and can be resumed); the old one was replaced
    if aside is not None and aside.exists():
        _restore(run_dir, aside)
    elif created and run_dir.is_dir():
        shutil.rmtree(run_dir)
