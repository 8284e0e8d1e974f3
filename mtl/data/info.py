"""What datasets are found, in one shape whatever is missing (``python -m mtl data info``, lesson 00).

``report()`` -> ``{"data_root", "cache_dir", NAME: D, ...}`` for every dataset whose spec can describe
itself (``names()``: Omniglot, mini-ImageNet), where each ``D`` is
``{"found": bool, "source": str | None, "splits": {split: ROW}}`` and every ``ROW`` has the same keys,
``{"found", "classes", "per_class", "images", "error"}``: counts and ``error=None`` when the split is
found, ``None`` counts and the message saying how to get the data when it is not.
"""
from __future__ import annotations

from mtl.data import cache
from mtl.data.registry import DATASETS
from mtl.errors import MTLError

ROW_KEYS = ("found", "classes", "per_class", "images", "error")


def _row(raw: dict) -> dict:
    if "error" in raw:
        return {"found": False, "classes": None, "per_class": None, "images": None, "error": raw["error"]}
    return {"found": True, "classes": raw["classes"], "per_class": raw["per_class"], "images": raw["images"],
            "error": None}


def names() -> list[str]:
    """The datasets ``report`` describes: those whose spec has a ``describe``."""
    return [name for name, spec in DATASETS.items() if spec.describe is not None]


def describe(name: str, *, root=None, cache_dir=None) -> dict:
    """Counts per split of dataset ``name`` (no decoding, nothing downloaded); see the module docstring."""
    spec = DATASETS[name]
    try:
        raw = spec.describe(root=root, cache_dir=cache_dir)
    except MTLError as exc:
        raw = {"source": "", "splits": {split: {"error": str(exc)} for split in spec.splits}}
    splits = {split: _row(row) for split, row in raw["splits"].items()}
    return {"found": all(row["found"] for row in splits.values()), "source": raw["source"] or None,
            "splits": splits}


def report(root=None, cache_dir=None) -> dict:
    """The data folder, the cache folder and :func:`describe` of each dataset."""
    return {"data_root": str(cache.data_root(root)), "cache_dir": str(cache.cache_dir(cache_dir)),
            **{name: describe(name, root=root, cache_dir=cache_dir) for name in names()}}
