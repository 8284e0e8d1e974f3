"""The run folder: checked before anything is created, moved or deleted; owned by one process;
never loses a run.

``prepare_run_dir`` checks that ``--out`` can be used as asked (a new folder, ``--resume`` of a run
with ``last.pt``, ``--overwrite`` of a folder holding only what mtl writes), creates it and takes
its lock: ``.mtl.lock`` holds the owner's pid and host, so a second process refused while the
first runs (a lock whose process has died on this host is named and taken over). ``release``
drops the lock.

``--overwrite`` moves the old run to ``.replaced-run/`` (listing what it moves) and keeps it there
until the new run has finished (``finish``); ``undo_start`` puts it back if the new run fails
before its first checkpoint, and removes a folder that the failed run created. A replacement that
fails later, or is killed, leaves the old run in ``.replaced-run/``, and every later command on
the folder says so; only files mtl writes are ever moved or deleted.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import sys
from pathlib import Path

from mtl.engine.checkpoint import BEST, LAST, is_checkpoint_name
from mtl.errors import MTLError, RunFolderError
from mtl.io import check_output_folder

#: files a run writes into its folder (``--overwrite`` moves exactly these, the rotated
#: checkpoints ``last-N.pt`` and ``eval-*.json``)
RUN_FILES = ("config.json", LAST, BEST, "metrics.jsonl", "metrics.csv", "summary.json")
#: where --overwrite keeps the old run until the new one has finished
REPLACED = ".replaced-run"
#: the lock file of the process that owns the folder (its pid and host)
LOCK = ".mtl.lock"


def written_by_mtl(path: Path) -> bool:
    """True for a regular file (not a link, not a folder) of a name mtl writes into a run folder:
    a run file, an evaluation JSON (``eval-*.json``), a temporary file of an atomic write of one."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    name = path.name
    if name in RUN_FILES or is_checkpoint_name(name) or (name.startswith("eval-") and name.endswith(".json")):
        return True
    return name.startswith(".") and name.endswith(".tmp") and any(
        name.startswith(f".{run_file}.") for run_file in RUN_FILES)


def prepare_run_dir(out: str | os.PathLike | None, *, resume: bool,
                    overwrite: bool) -> tuple[Path | None, Path | None, bool]:
    """Check (before any training) that the run folder can be used as asked; create and lock it.

    Returns ``(run folder, where an overwritten run is kept or None, folder created)``.
    """
    if out is None:
        if resume:
            raise RunFolderError("resume=True needs the run folder: pass out=DIR (--out DIR)")
        return None, None, False
    if resume and overwrite:
        raise RunFolderError("--resume continues a run, --overwrite replaces it: pass only one")
    try:
        run_dir = check_output_folder(out, "--out")
    except MTLError as error:
        raise RunFolderError(str(error)) from None
    _check_owner(run_dir)
    _check_contents(run_dir, resume=resume, overwrite=overwrite)  # before anything is created
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create {run_dir} ({exc.strerror or exc}): choose a writable --out") from exc
    _lock(run_dir)
    try:  # again under the lock: another process may have written meanwhile
        aside = _check_contents(run_dir, resume=resume, overwrite=overwrite)
        if aside is not None and resume:
            print(f"note: {aside} holds the run that an unfinished --overwrite replaced; it is deleted "
                  "when this run finishes", file=sys.stderr)
        elif overwrite and not resume:
            aside = _move_aside(run_dir)
    except BaseException:
        release(run_dir)
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir, aside, created


def _check_contents(run_dir: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Refuse a folder that cannot be used as asked; the ``.replaced-run`` it holds, if any."""
    entries = sorted(p for p in run_dir.iterdir() if p.name != LOCK) if run_dir.is_dir() else []
    aside = run_dir / REPLACED
    kept = aside if aside.is_dir() else None
    replaced_note = (f" ({aside} holds the run that an unfinished --overwrite replaced: move it "
                     "elsewhere to keep it)") if kept else ""
    if resume:
        if not (run_dir / LAST).is_file():
            raise RunFolderError(
                f"nothing to resume in {run_dir} (no last.pt): drop --resume to start a new run there"
                + (", with --overwrite to replace what it holds" if entries else "") + replaced_note
            )
        return kept
    if not entries:
        return None
    if not overwrite:
        names = [p.name for p in entries]
        raise RunFolderError(
            f"{run_dir} already exists and is not empty ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}): pass --resume to continue that run, "
            f"--overwrite to replace it, or choose another --out{replaced_note}"
        )
    foreign = [p.name for p in entries if p.name != REPLACED and not written_by_mtl(p)]
    if foreign:
        raise RunFolderError(
            f"{run_dir} holds files that mtl did not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); --overwrite only replaces what a run wrote: "
            "move them out, or choose another --out"
        )
    if kept and (run_dir / LAST).exists():
        raise RunFolderError(
            f"{aside} holds the run that an earlier --overwrite replaced, and that replacement (the "
            f"run now in {run_dir}) did not finish. Nothing was changed. Keep the old run by moving "
            f"it elsewhere (mv {aside} OLD_RUN), or delete it, then run again; or finish the "
            "replacement with --resume"
        )
    return None


def _move_aside(run_dir: Path) -> Path:
    """Move the run in ``run_dir`` to ``run_dir/.replaced-run`` (listing what moves); a leftover of
    a replacement killed before its first checkpoint is put back first."""
    aside = run_dir / REPLACED
    if aside.is_dir():
        _restore(run_dir, aside)
        print(f"note: restored the run that an --overwrite killed before its first checkpoint had "
              f"moved to {aside}", file=sys.stderr)
    moving = sorted(p for p in run_dir.iterdir() if written_by_mtl(p))
    if not moving:
        return None
    print(f"--overwrite: moving the run in {run_dir} ({', '.join(p.name for p in moving)}) to {aside}; "
          "it is deleted when the new run finishes, kept if it does not", file=sys.stderr)
    aside.mkdir()
    for path in moving:
        path.rename(aside / path.name)
    return aside


def _restore(run_dir: Path, aside: Path) -> None:
    """Put the run moved aside by --overwrite back in place of what the new run wrote."""
    for path in run_dir.iterdir():
        if path != aside and written_by_mtl(path):
            path.unlink()
    for path in aside.iterdir():
        if (run_dir / path.name).exists():
            raise RunFolderError(f"cannot restore {path}: {run_dir / path.name} exists; move one of them")
        path.rename(run_dir / path.name)
    aside.rmdir()


def undo_start(run_dir: Path, aside: Path | None, created: bool) -> str | None:
    """A run that failed before its first checkpoint leaves the folder as it found it.

    Returns a sentence for the user when an old run is kept aside (the new run had checkpoints).
    """
    if (run_dir / LAST).exists():
        if aside is not None and aside.exists():
            return (f"The run that --overwrite replaced is kept in {aside}: to get it back, delete the "
                    f"new run's files and move its contents to {run_dir}.")
        return None
    if aside is not None and aside.exists():
        _restore(run_dir, aside)
    elif created and run_dir.is_dir():
        for path in run_dir.iterdir():
            if written_by_mtl(path) or path.name == LOCK:
                path.unlink()
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
    return None


def finish(run_dir: Path, aside: Path | None) -> None:
    """The new run has finished: the run it replaced may go."""
    if aside is not None and aside.is_dir():
        shutil.rmtree(aside)


# ----------------------------------------------------------------------------- the lock
def _owner(lock: Path) -> tuple[int | None, str]:
    """``(pid, host)`` written in a lock file (pid None if unreadable)."""
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def _alive(pid: int | None, host: str) -> bool:
    """Whether process ``pid`` may still run (True when it runs on another host: it cannot be asked)."""
    if pid is None:
        return False
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_owner(run_dir: Path) -> None:
    """Refuse a folder whose lock belongs to a live process."""
    lock = run_dir / LOCK
    if not lock.exists():
        return
    pid, host = _owner(lock)
    if _alive(pid, host):
        raise RunFolderError(
            f"{run_dir} is in use by process {pid}{f' on {host}' if host else ''} (lock file {lock}): "
            "wait for that run to finish, or choose another --out. If no such process runs, delete "
            f"{lock} and run again"
        )


def _lock(run_dir: Path) -> None:
    """Take the folder's lock (a stale one, whose process has died, is named and taken over)."""
    lock = run_dir / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, host = _owner(lock)
            if _alive(pid, host):
                _check_owner(run_dir)
            print(f"note: removing the stale lock {lock} of process {pid}, which no longer runs",
                  file=sys.stderr)
            lock.unlink(missing_ok=True)
            continue
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC):
                raise RunFolderError(f"cannot write to {run_dir} ({exc.strerror}): choose a writable --out") from exc
            raise
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return
    raise RunFolderError(f"could not take the lock {lock}: another process keeps taking it; choose another --out")


def release(run_dir: Path | None) -> None:
    """Drop the folder's lock if this process holds it."""
    if run_dir is None:
        return
    lock = run_dir / LOCK
    pid, _ = _owner(lock)
    if pid == os.getpid():
        lock.unlink(missing_ok=True)
