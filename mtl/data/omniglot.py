"""Omniglot (Lake et al. 2015): 1623 handwritten characters x 20 drawers, from the 105x105 originals.

Splits (``load_dataset("omniglot", split)``):
- ``train`` / ``val`` / ``test``: the MAML split of all 1623 characters, 1100 / 100 / 423. The
  characters are ordered by the SHA-256 of ``"omniglot:<alphabet>/<character>"`` (a fixed order on
  every platform and library version) and cut in that order; each split lists its characters sorted.
- ``background`` / ``evaluation``: the alphabet split of the original release (964 / 659).
- ``all``: every character (background first).

Images are converted to grayscale 'L' and resized once with an area (BOX) filter, then inverted, so
**ink is bright (255) on a black (0) background**, as MAML feeds them (``1 - image``). They are cached as
one uint8 file ``omniglot-<size>-all.pt`` (25 MB at 28x28).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from mtl.data import _decode, cache
from mtl.data.archives import download as _download
from mtl.data.archives import iter_files, list_names
from mtl.data._sources import find_source
from mtl.data.cache import CACHE_VERSION, atomic_save, cache_dir as _cache_dir, data_root, load_cache
from mtl.data.dataset import FewShotDataset
from mtl.data.spec import DatasetSpec
from mtl.errors import ConfigError, DataError

NAME = "omniglot"
PARTS = {"images_background": 964, "images_evaluation": 659}
DRAWERS = 20
#: where the official archives are downloaded from; ``$MTL_OMNIGLOT_URL`` (a URL with ``{part}``) overrides it
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{part}.zip"
#: checksums of each part by file form: md5 of the official zips (as recorded by
#: torchvision.datasets.Omniglot), sha256 of the .tar.gz repacks described in data/README.md
CHECKSUMS = {
    "images_background": {".zip": ("md5", "68d2efa1b9178cc56df9314c21c6e718"),
                          ".tar.gz": ("sha256", "ddd88dca7e8314c7f65284e37dc957c58eab92b17732a82035824164e35a59b9")},
    "images_evaluation": {".zip": ("md5", "6b91aef0f799c5bb55b94e3f2daec811"),
                          ".tar.gz": ("sha256", "6183abaf0c3fe08f6441959dc619fb591e64491a6b59e8645c1744e144ad1e67")},
}
MAML_SPLIT = {"train": 1100, "val": 100, "test": 423}
SPLITS = ("train", "val", "test", "background", "evaluation", "all")
DEFAULT_SIZE = 28
_MEMBER = re.compile(r"(?:^|/)(images_background|images_evaluation)/([^/]+)/([^/]+)/([^/]+\.png)$", re.I)


def _where_to_put(root: Path) -> str:
    return (
        "Put images_background and images_evaluation (the official .zip files from "
        "https://github.com/brendenlake/omniglot/tree/master/python, .tar.gz archives, or the unpacked "
        f"folders) in {root / NAME}/ ($MTL_DATA/omniglot/; MTL_DATA is {root}), "
        "or allow the download (download=True) on a machine with network access."
    )


def download_url(part: str) -> tuple[str, str]:
    """``(url, file suffix)`` of ``part``: from ``$MTL_OMNIGLOT_URL`` (a mirror) if set, else :data:`URL`."""
    template = os.environ.get("MTL_OMNIGLOT_URL") or URL
    if "{part}" not in template:
        raise ConfigError(f"MTL_OMNIGLOT_URL={template!r} has no '{{part}}': give the address of each "
                          "archive, e.g. http://127.0.0.1:8000/{part}.zip (or .tar.gz)")
    url = template.replace("{part}", part)
    suffix = next((s for s in CHECKSUMS[part] if url.lower().endswith(s)), None)
    if suffix is None:
        raise ConfigError(f"{url} is neither a .zip nor a .tar.gz: Omniglot's archives are verified by "
                          f"their checksums, known for {' and '.join(CHECKSUMS[part])} only (MTL_OMNIGLOT_URL)")
    return url, suffix


def find_sources(root=None, cache=None, *, download: bool = True, progress: bool = True) -> dict[str, Path]:
    """Archive or folder of each part: ``$MTL_DATA`` first, then ``<cache>/downloads`` (older downloads),
    then a download into ``$MTL_DATA/omniglot/``, verified by checksum."""
    root, cache = data_root(root), _cache_dir(cache)
    folders = [root / NAME, root / "omniglot-py", root, cache / "downloads"]
    sources = {}
    for part in PARTS:
        found = find_source(folders, part)
        if found is None and download:
            url, suffix = download_url(part)
            algorithm, expected = CHECKSUMS[part][suffix]
            found = _download(url, root / NAME / f"{part}{suffix}", progress=progress, hint=_where_to_put(root),
                              **{algorithm: expected})
        if found is None:
            raise DataError(f"Omniglot's {part} was not found. {_where_to_put(root)}")
        sources[part] = found
    return sources


def _layout_error(source: Path, name: str) -> DataError:
    return DataError(
        f"{source} does not have Omniglot's layout: found {name!r}, expected "
        "images_background/<Alphabet>/<characterNN>/<NNNN_MM>.png (or images_evaluation/...). "
        "Use the official images_background.zip / images_evaluation.zip or their unpacked folders."
    )


def _match(source: Path, part: str, name: str) -> tuple[str, str] | None:
    """``(character name, file name)`` of a member, None for files to ignore; layout errors raise."""
    if not name.lower().endswith(".png") or "/__MACOSX/" in f"/{name}":
        return None
    match = _MEMBER.search(name)
    if match is None or match.group(1).lower() != part:
        raise _layout_error(source, name)
    return f"{match.group(2)}/{match.group(3)}", match.group(4)


def _check_counts(part: str, source: Path, characters: dict[str, list]) -> None:
    bad = {k: len(v) for k, v in characters.items() if len(v) != DRAWERS}
    if len(characters) != PARTS[part] or bad:
        detail = f"{len(characters)} characters (expected {PARTS[part]})"
        if bad:
            name, count = next(iter(bad.items()))
            detail += f"; {name} has {count} images (expected {DRAWERS})"
        raise DataError(f"{source} is incomplete: {detail}. Replace it with the complete official file.")


def build(sources: dict[str, Path], *, size: int = DEFAULT_SIZE, progress: bool = True) -> dict:
    """Decode every character of both parts: ``{"images": uint8 [1623, 20, 1, size, size], ...}``."""
    names, blobs = [], []
    for part, source in sources.items():
        characters: dict[str, list[tuple[str, bytes]]] = {}
        for member, data in iter_files(source, progress=progress):
            matched = _match(source, part, member)
            if matched is not None:
                characters.setdefault(matched[0], []).append((matched[1], data))
        _check_counts(part, source, characters)
        for character in sorted(characters):
            names.append(character)
            blobs.extend(data for _, data in sorted(characters[character]))
    pixels = _decode.decode_images(blobs, size=size, mode="L", invert=True, progress=progress,
                                   desc="omniglot")
    images = torch.from_numpy(pixels).reshape(len(names), DRAWERS, 1, size, size)
    return {"version": CACHE_VERSION, "images": images, "class_names": names,
            "num_background": PARTS["images_background"], "size": size}


def maml_order(class_names: list[str]) -> list[int]:
    """Indices of ``class_names`` in the fixed MAML-split order (SHA-256 of each name)."""
    key = lambda i: hashlib.sha256(f"omniglot:{class_names[i]}".encode()).hexdigest()  # noqa: E731
    return sorted(range(len(class_names)), key=key)


def split_indices(class_names: list[str], split: str, num_background: int) -> list[int]:
    """Class indices (into the ``all`` order) of ``split``."""
    if split == "all":
        return list(range(len(class_names)))
    if split == "background":
        return list(range(num_background))
    if split == "evaluation":
        return list(range(num_background, len(class_names)))
    order = maml_order(class_names)
    start = {"train": 0, "val": MAML_SPLIT["train"], "test": MAML_SPLIT["train"] + MAML_SPLIT["val"]}[split]
    return sorted(order[start:start + MAML_SPLIT[split]])


def cache_path(cache=None, size: int = DEFAULT_SIZE) -> Path:
    return _cache_dir(cache) / f"{NAME}-{size}-all.pt"


def prepare(*, root=None, cache_dir=None, image_size: int | None = None, download: bool = True,
            progress: bool = True, force: bool = False) -> dict:
    """The cache dict (memory-mapped), building and writing it first if absent (or ``force``)."""
    size = cache.image_size(image_size, DEFAULT_SIZE)
    path = cache_path(cache_dir, size)
    content = None if force else load_cache(path)
    if content is None:
        cache.ensure_writable(path)
        sources = find_sources(root, cache_dir, download=download, progress=progress)
        atomic_save(build(sources, size=size, progress=progress), path)
        content = load_cache(path)
    return content


def rotate_classes(images: torch.Tensor, class_names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Add the 90/180/270-degree rotations as new classes: ``[C, ...]`` -> ``[4C, ...]`` (rotation-major)."""
    rotated = torch.cat([images.rot90(k, dims=(-2, -1)) for k in range(4)])
    names = [f"{name}/rot{90 * k:03d}" for k in range(4) for name in class_names]
    return rotated, names


def load(split: str, *, root=None, cache_dir=None, image_size: int | None = None, download: bool = True,
         progress: bool = True, rotations: bool = False) -> FewShotDataset:
    """One Omniglot split as a :class:`FewShotDataset` (``images`` uint8 ``[C, 20, 1, S, S]``)."""
    if split not in SPLITS:
        raise DataError(f"Unknown Omniglot split {split!r}: use one of {', '.join(SPLITS)}.")
    content = prepare(root=root, cache_dir=cache_dir, image_size=image_size, download=download,
                      progress=progress)
    names = content["class_names"]
    index = split_indices(names, split, content["num_background"])
    images = content["images"][torch.tensor(index)]
    class_names = [names[i] for i in index]
    if rotations:
        images, class_names = rotate_classes(images, class_names)
    return FewShotDataset(images=images, class_names=class_names, name=NAME, split=split)


def describe(*, root=None, cache_dir=None) -> dict:
    """Classes and images per split, from the cache if built, else from the files' names (no decoding)."""
    path = cache_path(cache_dir)
    content = load_cache(path)
    if content is not None:
        names, per_class, background, source = (content["class_names"], content["images"].shape[1],
                                                content["num_background"], str(path))
    else:
        sources = find_sources(root, cache_dir, download=False)
        names, background = [], 0
        for part, src in sources.items():
            characters: dict[str, list] = {}
            for member in list_names(src):
                matched = _match(src, part, member)
                if matched is not None:
                    characters.setdefault(matched[0], []).append(matched[1])
            _check_counts(part, src, characters)
            names.extend(sorted(characters))
            background = background or len(names)
        per_class, source = DRAWERS, ", ".join(map(str, sources.values()))
    splits = {s: {"classes": len(split_indices(names, s, background)), "per_class": per_class,
                  "images": len(split_indices(names, s, background)) * per_class} for s in SPLITS}
    return {"source": source, "splits": splits}


def _prepare_lines(splits, *, root=None, cache_dir=None, image_size=None, progress=True, force=False,
                   download=True) -> list[str]:
    """Build the cache (every split is cut from one file); the line ``python -m mtl data prepare`` prints."""
    content = prepare(root=root, cache_dir=cache_dir, image_size=image_size, download=download,
                      progress=progress, force=force)
    classes, per_class = content["images"].shape[:2]
    return [f"{NAME}: {classes} characters x {per_class} drawers -> "
            f"{cache_path(cache_dir, image_size or DEFAULT_SIZE)}"]


SPEC = DatasetSpec(name=NAME, load=load, splits={**MAML_SPLIT, "background": PARTS["images_background"],
                                                 "evaluation": PARTS["images_evaluation"],
                                                 "all": sum(PARTS.values())},
                   per_class=DRAWERS, channels=(1,), image_size=DEFAULT_SIZE, hidden=64, inverted=True,
                   options=("rotations",), rotations=True, describe=describe, prepare=_prepare_lines)
