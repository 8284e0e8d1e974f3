"""Checkpoints: what they hold, what their files are called, how they rotate, how they are written
and read. Every checkpoint of mtl (training runs of every algorithm, pre-training included) is
written and read here; ``mtl.io.atomic_save`` does the atomic write underneath.

The payload, a ``torch.save`` dict of plain values and tensors, read with ``weights_only=True``
(no pickled code ever runs)::

    {"format": "mtl-checkpoint", "version": 1,
     "config": {...},              # the resolved TrainConfig as a dict
     "step": int,                  # meta-steps completed
     "learner": state_dict,        # the learner module (model + any meta-learned extras)
     "optimizer": state_dict,
     "rng": {"torch", "cuda", "python", "numpy", "generators"},  # every random state
     "state": {...}}               # the engine's own counters (metric rows, best score, timers)

Files in a run folder: ``last.pt`` (every ``checkpoint_every`` steps: what ``--resume`` continues),
``best.pt`` (on each new best validation score), and with ``keep > 1`` the ``keep - 1`` checkpoints
before the last as ``last-1.pt`` (the one before), ``last-2.pt``, ...: ``last.pt`` is always there
and whole while they rotate.

- ``write_checkpoint(folder, name, ...)``: the payload of a run at its current step, to a file.
- ``load_checkpoint(path)``: a checked payload, or `CheckpointError` naming the fix.
- ``load_learner_state``: a payload's weights into a learner already built (resume, ``--init``,
  and ``mtl.engine.build.load_learner``, which builds the learner a checkpoint's config describes:
  what evaluation, ``FewShotClassifier``, ``python -m mtl adapt`` and the course load).
- ``load_pretrained(path)``: the network of a pre-training run (``--algorithm pretrain``).
- ``export_weights(path, out)``: a small copy for sharing (config, step and weights; not resumable).
- ``capture_rng`` / ``restore_rng``: every random state, so a run resumes bit-for-bit.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtl.errors import CheckpointError
from mtl.io import atomic_save, check_output_file, file_kind

FORMAT = "mtl-checkpoint"
VERSION = 1
#: the checkpoint ``--resume`` continues, and the one of the best validation score
LAST, BEST = "last.pt", "best.pt"
#: what evaluation and `load_learner` read (all that `export_weights` keeps), and what a resume needs
WEIGHTS = ("config", "step", "learner")
RESUMABLE = (*WEIGHTS, "optimizer", "rng", "state")
_ROTATED = re.compile(r"last-[1-9][0-9]*\.pt")


def is_checkpoint_name(name: str) -> bool:
    """True for the file names checkpoints take in a run folder (``last.pt``, ``best.pt``, ``last-N.pt``)."""
    return name in (LAST, BEST) or _ROTATED.fullmatch(name) is not None


# ----------------------------------------------------------------------------- writing
def payload(config: Any, step: int, learner: nn.Module, optimizer: torch.optim.Optimizer,
            sampler: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The dict a checkpoint holds (see the module docstring) for a run at meta-step ``step``."""
    return {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "step": int(step),
            "learner": learner.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": capture_rng(sampler, learner), "state": dict(state)}


def write_checkpoint(folder: str | os.PathLike, name: str, data: dict[str, Any], *, keep: int = 1) -> Path:
    """Write ``data`` (a `payload`) to ``folder / name`` atomically; returns the path.

    ``keep``: for ``LAST``, how many checkpoints to keep, the newest as ``last.pt``, the older
    ones rotated to ``last-1.pt`` ... ``last-{keep-1}.pt`` (the oldest beyond them is deleted).
    """
    if not is_checkpoint_name(name):
        raise CheckpointError(f"{name!r} is not a checkpoint name: use {LAST!r} or {BEST!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise CheckpointError(f"keep must be a whole number >= 1 (checkpoints kept), got {keep!r}")
    folder = Path(folder)
    if name == LAST and keep > 1:
        _rotate(folder, keep)
    return atomic_save(data, folder / name)


def save_checkpoint(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` (plus the format tag) to ``path`` atomically: a checkpoint outside a run folder."""
    return atomic_save({"format": FORMAT, "version": VERSION, **data}, path)


def _rotate(folder: Path, keep: int) -> None:
    """Shift ``last-{i}.pt`` to ``last-{i+1}.pt`` (dropping ``last-{keep-1}.pt``), then put a
    copy of ``last.pt`` at ``last-1.pt``; ``last.pt`` itself is left in place, so a kill at any
    moment leaves a whole ``last.pt`` to resume from."""
    last = folder / LAST
    if not last.is_file():
        return
    (folder / f"last-{keep - 1}.pt").unlink(missing_ok=True)  # the oldest kept goes
    for i in range(keep - 2, 0, -1):
        older = folder / f"last-{i}.pt"
        if older.is_file():
            os.replace(older, folder / f"last-{i + 1}.pt")
    link = folder / f".{LAST}.rotate.tmp"
    link.unlink(missing_ok=True)
    try:
        os.link(last, link)  # a second name for the same bytes: no copy
    except OSError:
        import shutil

        shutil.copyfile(last, link)
    os.replace(link, folder / "last-1.pt")


# ----------------------------------------------------------------------------- reading
def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or for a run folder its ``best.pt`` (else ``last.pt``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).exists():
                return path / name
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *,
                    required: tuple[str, ...] = WEIGHTS) -> dict[str, Any]:
    """Read and check a checkpoint file (``weights_only=True``); `CheckpointError` names the fix.

    ``required``: the keys it must hold (a training run's by default).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: pass a checkpoint file such as {path / LAST}")
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: check the path, or train one with `python -m mtl train ... --out DIR`"
        )
    if not path.is_file():  # a FIFO or device would block the read, or never end
        raise CheckpointError(f"{path} is a {file_kind(os.stat(path).st_mode)}, not a checkpoint file: "
                              "pass the path of a .pt file written by `python -m mtl train`")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError,
            OSError, AttributeError, TypeError, KeyError) as exc:
        text = str(exc)
        lower = text.lower()
        if isinstance(exc, pickle.UnpicklingError) and "global" in lower and any(
                word in lower for word in ("unsupported", "blocked", "not allowed", "reduce")):
            # torch's own text suggests weights_only=False, which would run the file's code: never shown
            raise CheckpointError(
                f"{path} holds pickled Python objects beyond tensors and plain values, and mtl "
                "never runs code from a checkpoint (torch.load with weights_only=True): it was not "
                "written by mtl, or was altered. Use a checkpoint written by `python -m mtl train`."
            ) from None
        detail = "" if "weights_only" in text else f": {_first_line(exc)}"
        raise CheckpointError(
            f"{path} is corrupt or not a torch checkpoint ({type(exc).__name__}{detail}). "
            f"Delete it and train again, or point to an intact checkpoint (e.g. {BEST} beside it)."
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
    if missing and all(k in data for k in WEIGHTS):
        raise CheckpointError(f"{path} holds weights only (an exported checkpoint): evaluate or adapt with it, "
                              "or start a new run from it with --init; a run resumes only from its own last.pt")
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: it is damaged; retrain or use another checkpoint")
    return data


def export_weights(path: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Write a small copy of a checkpoint (a file, or a run folder: its best.pt, else last.pt) to
    ``out``: its config, step and learner weights, without the optimizer state, the random states
    and the engine's counters. Evaluation, ``load_learner``, ``FewShotClassifier``, ``adapt`` and
    ``--init`` read it; a run cannot resume from it. ``out`` is checked before anything is read, and
    an existing file is replaced only with ``force=True``."""
    source = checkpoint_path(path)
    target = check_output_file(out, "the exported checkpoint")
    if target.exists() and not force:
        raise CheckpointError(f"{target} already exists: pass force=True (--force) to replace it, or choose "
                              "another path")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise CheckpointError(f"{target} is the checkpoint being exported: choose another path")
    data = load_checkpoint(source)
    return save_checkpoint(target, {k: data[k] for k in WEIGHTS})


def load_learner_state(learner: nn.Module, state: dict[str, Any], path: Path | str) -> None:
    """Load a checkpoint's learner state; a mismatch names the tensors that do not fit."""
    own = learner.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
              for k in own if k in state and hasattr(state[k], "shape")
              and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = ([f"shape of {s}" for s in shapes[:3]] + [f"missing {k}" for k in missing[:3]]
                + [f"unexpected {k}" for k in unexpected[:3]])
    try:
        learner.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        detail = "; ".join(problems) or str(exc).splitlines()[0][:200]
        raise CheckpointError(
            f"{path} does not fit the model its config describes ({detail}). The config and the "
            "weights disagree: the file was edited, or written by an mtl whose models differ; "
            "retrain, or evaluate it with the mtl version that wrote it."
        ) from exc


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The ResNet-12 of a pre-training run (``--algorithm pretrain``; a run folder or its ``.pt``),
    in eval mode: the network that transfer and meta-transfer learning start from."""
    from mtl.algorithms.transfer.pretrain import network_from_state

    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"no pre-training checkpoint at {path}: run `python -m mtl train --algorithm "
                              "pretrain --out RUN` first, or fix the path")
    try:
        data = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} For pre-training: pass the run folder of `python -m mtl train "
                              "--algorithm pretrain`, or pre-train again.") from exc
    algorithm = data["config"].get("algorithm")
    if algorithm != "pretrain":
        raise CheckpointError(f"{path} is a {algorithm!r} run, not a pre-training run; pass the run "
                              "folder of `python -m mtl train --algorithm pretrain`")
    state = {k[len("model."):]: v for k, v in data["learner"].items() if k.startswith("model.")}
    return network_from_state(state, source=str(path)).to(map_location).eval()


# ----------------------------------------------------------------------------- random states
def capture_rng(sampler: Any = None, learner: Any = None) -> dict[str, Any]:
    """Every random state that can change a run: torch (CPU, CUDA), Python, NumPy, and each
    ``torch.Generator`` held by the sampler (e.g. the episode sampler's) or by a learner sub-module."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": _python_state_to_plain(random.getstate()),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "generators": {name: g.get_state() for name, g in _generators(sampler, learner).items()},
    }


def restore_rng(state: dict[str, Any], sampler: Any = None, learner: Any = None) -> None:
    """Put back what `capture_rng` took (the same sampler and learner objects, freshly built)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_python_state_from_plain(state["python"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    generators = _generators(sampler, learner)
    saved = state.get("generators", {})
    if set(saved) != set(generators):
        raise CheckpointError(
            f"the checkpoint's random generators {sorted(saved)} do not match this run's "
            f"{sorted(generators)}: resume with the same algorithm and mtl version, or retrain"
        )
    for name, generator in generators.items():
        generator.set_state(saved[name])


def _generators(sampler: Any, learner: Any) -> dict[str, torch.Generator]:
    """``torch.Generator`` attributes of the sampler (and what it wraps) and of learner sub-modules."""
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    objects: list[tuple[str, Any]] = []
    inner, prefix = sampler, "sampler"
    while inner is not None and id(inner) not in seen:  # wrappers that hold a `.sampler`
        seen.add(id(inner))
        objects.append((prefix, inner))
        inner, prefix = vars(inner).get("sampler") if hasattr(inner, "__dict__") else None, prefix + ".sampler"
    if learner is not None:
        objects += [(f"learner.{name}" if name else "learner", module) for name, module in learner.named_modules()]
    for prefix, obj in objects:
        for attr, value in sorted(vars(obj).items()):
            if isinstance(value, torch.Generator) and value.device.type == "cpu":
                found[f"{prefix}.{attr}"] = value
    return found


def _python_state_to_plain(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_plain(plain: dict[str, Any]) -> tuple:
    return plain["version"], tuple(int(v) for v in plain["internal"].tolist()), plain["gauss"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
