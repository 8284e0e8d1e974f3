"""What the engine puts in a checkpoint beyond weights: every random state, so a run resumes
bit-for-bit. The file format itself (``save_checkpoint``, ``load_checkpoint``, ``checkpoint_path``)
is ``mtl.io``'s, shared with pre-training::

    {"format": "mtl-checkpoint", "version": 1,
     "config": {...},              # the resolved TrainConfig as a dict
     "step": int,                  # meta-steps completed
     "learner": state_dict,        # the learner module (model + any meta-learned extras)
     "optimizer": state_dict,
     "rng": {"torch", "cuda", "python", "numpy", "generators"},  # every random state
     "state": {...}}               # the engine's own counters (metric rows, best score, timers)
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from mtl.errors import CheckpointError
from mtl.io import FORMAT, VERSION, checkpoint_path, load_checkpoint, save_checkpoint  # noqa: F401

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
