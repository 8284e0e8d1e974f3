"""Writing files safely and the progress switch, shared by every layer.

- ``atomic_save`` / ``atomic_write_text``: a temporary file in the same folder, flushed, then
  ``os.replace``-d over the target: a reader (or a killed writer) sees the old file or the new one,
  never half of one. Caches, checkpoints, benchmark and result JSON all go through them.
- ``save_checkpoint`` / ``load_checkpoint``: the one checkpoint format (a ``torch.save`` dict of
  plain values and tensors, tagged ``"format": "mtl-checkpoint"``), read with
  ``weights_only=True`` so no pickled code runs; training runs and pre-training both write it.
- ``progress_enabled``: ``progress=False``, or env var ``MTL_PROGRESS`` set to 0/false/no/off.
  Every bar of mtl (data decoding, training, pre-training, evaluation, lessons) asks it, so one
  setting silences them all.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, TypeVar

from mtl.errors import CheckpointError

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


def _atomic_write(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the result is readable like any file
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file in the same folder + ``os.replace``)."""
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _atomic_write(path, lambda f: f.write(text.encode()))


# ----------------------------------------------------------------------------- checkpoints
FORMAT = "mtl-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (plus the format tag) to ``path`` (temp file + ``os.replace``)."""
    atomic_save({"format": FORMAT, "version": VERSION, **payload}, path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *,
                    required: tuple[str, ...] = ("config", "step", "learner")) -> dict[str, Any]:
    """Read and validate a checkpoint (``weights_only=True``); `CheckpointError` names the fix.

    ``required``: the keys it must hold (a training run's by default).
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: pass a checkpoint file such as {path / 'last.pt'}")
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: check the path, or train one with `python -m mtl train ... --out DIR`"
        )
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError,
            OSError, AttributeError, TypeError, KeyError) as exc:
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
            raise CheckpointError(
                f"{path} holds pickled Python objects beyond tensors and plain values, and mtl "
                "never runs code from a checkpoint (torch.load with weights_only=True): it was not "
                "written by mtl, or was altered. Use a checkpoint written by `python -m mtl train`."
            ) from None
        detail = _first_line(exc)
        if "WeightsUnpickler error:" in text:  # torch's own hint (weights_only=False) is left out
            detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        raise CheckpointError(
            f"{path} is corrupt or not a torch checkpoint ({type(exc).__name__}: {detail}). "
            "Delete it and train again, or point to an intact checkpoint (e.g. best.pt beside it)."
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not an mtl checkpoint: train with `python -m mtl train` "
            "to make one, or load foreign weights into a model yourself with load_state_dict."
        )
    if data.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {data.get('version')}, this mtl reads version {VERSION}: "
            "use the mtl version that wrote it, or retrain."
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: it is damaged; retrain or use another checkpoint")
    return data


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or for a run folder its ``best.pt`` (else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                return path / name
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
