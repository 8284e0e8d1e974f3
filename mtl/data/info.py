"""What datasets are found, in one shape whatever is missing (``python -m mtl data info``, lesson 00).

``report()`` -> ``{"data_root", "cache_dir", "omniglot": D, "mini-imagenet": D}`` where each ``D`` is
``{"found": bool, "source": str | None, "splits": {split: ROW}}`` and every ``ROW`` has the same keys,
``{"found", "classes", "per_class", "images", "error"}``: counts and ``error=None`` when the split is
found, ``None`` counts and the message saying how to get the data when it is not.
"""
from __future__ import annotations

from mtl.data import DATASETS, cache
from mtl.errors import MTLError

NAMES = ("omniglot", "mini-imagenet")
ROW_KEYS = ("found", "classes", "per_class", "images", "error")


def _row(raw: dict) -> dict:
    if "error" in raw:
        return {"found": False, "classes": None, "per_class": None, "images": None, "error": raw["error"]}
    return {"found": True, "classes": raw["classes"], "per_class": raw["per_class"], "images": raw["images"],
            "error": None}


def describe(name: str, *, root=None, cache_dir=None) -> dict:
    """Counts per split of dataset ``name`` (no decoding, nothing downloaded); see the module docstring."""
    from mtl.data import miniimagenet, omniglot

    module = {"omniglot": omniglot, "mini-imagenet": miniimagenet}[name]
    try:
        raw = module.describe(root=root, cache_dir=cache_dir)
    except MTLError as exc:
        raw = {"source": "", "splits": {split: {"error": str(exc)} for split in DATASETS[name]}}
    splits = {split: _row(row) for split, row in raw["splits"].items()}
    return {"found": all(row["found"] for row in splits.values()), "source": raw["source"] or None,
            "splits": splits}


def report(root=None, cache_dir=None) -> dict:
    """The data folder, the cache folder and :func:`describe` of each dataset."""
    return {"data_root": str(cache.data_root(root)), "cache_dir": str(cache.cache_dir(cache_dir)),
            **{name: describe(name, root=root, cache_dir=cache_dir) for name in NAMES}}
