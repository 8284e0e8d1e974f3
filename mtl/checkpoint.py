"""Checkpoints that survive a kill at any moment and resume bit-for-bit.

A checkpoint is one ``torch.save`` file holding plain values and tensors only, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs)::

    {"format": "mtl-checkpoint", "version": 1,
     "config": {...},              # the resolved TrainConfig as a dict
     "step": int,                  # meta-steps completed
     "learner": state_dict,        # the algorithm module (model + any meta-learned extras)
     "optimizer": state_dict,
     "rng": {"torch", "cuda", "python", "numpy", "generators"},  # every random state
     "state": {...}}               # the engine's own counters (metric rows, best score, timers)

Writes are atomic: the file is written beside its target under a temporary name, flushed to disk,
then ``os.replace``-d over the target, so a reader sees the old checkpoint or the new one, never
half of one.
"""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl.data.cache import atomic_save
from mtl.errors import CheckpointError

FORMAT = "mtl-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (plus the format tag) to ``path`` (temp file + ``os.replace``)."""
    atomic_save({"format": FORMAT, "version": VERSION, **payload}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint (``weights_only=True``); `CheckpointError` names the fix."""
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
    missing = [k for k in ("config", "step", "learner") if k not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: it is damaged; retrain or use another checkpoint")
    return data


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
