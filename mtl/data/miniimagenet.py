"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle split: 64 / 16 / 20 classes x 600.

The images come from ImageNet, whose terms allow non-commercial research use only, so mtl never
downloads them: see data/README.md for how to obtain them. Accepted under ``$MTL_DATA/mini-imagenet/``
(or ``$MTL_DATA`` itself), per split (``train``, ``val``, ``test``):
- ``<split>.tar.gz`` / ``.tgz`` / ``.tar`` / ``.zip`` holding ``<split>/<wnid>/*.jpg`` and ``<split>.csv``;
- the unpacked folder ``<split>/<wnid>/*.jpg`` (with ``<split>.csv`` beside it, optional);
- Ravi's original layout: ``images/*.jpg`` (all images in one folder) plus ``<split>.csv``.
The CSV (``filename,label``) decides the split's classes and images when present. Images are decoded
once to 84x84 RGB (resized if needed) and cached as ``mini-imagenet-<size>-<split>.pt``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath

import torch

from mtl.data import _decode, cache
from mtl.data._sources import find_source
from mtl.data.archives import iter_files
from mtl.data.cache import CACHE_VERSION, atomic_save, cache_dir as _cache_dir, data_root, load_cache
from mtl.data.dataset import FewShotDataset
from mtl.data.spec import DatasetSpec
from mtl.errors import DataError

NAME = "mini-imagenet"
SPLITS = {"train": 64, "val": 16, "test": 20}
PER_CLASS = 600
DEFAULT_SIZE = 84
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _where_to_put(root: Path | None, split: str) -> str:
    return (
        f"mini-ImageNet cannot be downloaded for you (ImageNet terms). Put {split}.tar.gz (holding "
        f"{split}/<wnid>/*.jpg and {split}.csv), or the unpacked {split}/ folder with {split}.csv, in "
        f"$MTL_DATA/mini-imagenet/ (MTL_DATA is {str(root) if root else 'not set'}); see data/README.md."
    )


def find_source_for(split: str, root=None) -> Path:
    """The archive or folder holding ``split`` under the data root, or a DataError saying where to put it."""
    root = data_root(root)
    folders = [root / NAME, root] if root else []
    found = find_source(folders, split)
    if found is None:
        for folder in folders:
            if (folder / "images").is_dir() and (folder / f"{split}.csv").is_file():
                return folder / "images"
        raise DataError(f"mini-ImageNet's {split!r} split was not found. {_where_to_put(root, split)}")
    return found


def _read_csv(data: bytes) -> dict[str, str]:
    """``filename -> wnid`` from a Ravi CSV (header ``filename,label``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"A mini-ImageNet CSV is not UTF-8 text ({error}): the file is corrupted or "
                        "not the official one; replace it with the CSV of Ravi & Larochelle's split.") from None
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [h.strip().lower() for h in header[:2]] != ["filename", "label"]:
        raise DataError("A mini-ImageNet CSV must start with the header 'filename,label'.")
    return {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}


def _csv_beside(source: Path, split: str) -> dict[str, str] | None:
    path = source.parent / f"{split}.csv"
    return _read_csv(path.read_bytes()) if source.is_dir() and path.is_file() else None


def _classify(source: Path, split: str, names: list[str], labels: dict[str, str] | None) -> dict[str, list[str]]:
    """``wnid -> sorted member names``; with a CSV its labels decide, else the ``<split>/<wnid>/`` folders."""
    classes: dict[str, list[str]] = {}
    for name in names:
        path = PurePosixPath(name)
        if path.suffix.lower() not in _IMAGE_SUFFIXES or "__MACOSX" in path.parts:
            continue
        if labels is not None:
            wnid = labels.get(path.name)
        elif len(path.parts) >= 3 and path.parts[-3] == split:
            wnid = path.parts[-2]
        else:
            raise DataError(
                f"{source} does not have mini-ImageNet's layout: found {name!r}, expected "
                f"{split}/<wnid>/<image>.jpg (or a {split}.csv naming each image). See data/README.md."
            )
        if wnid is not None:
            classes.setdefault(wnid, []).append(name)
    _check_counts(source, split, classes, labels)
    return {wnid: sorted(members) for wnid, members in sorted(classes.items())}


def _check_counts(source: Path, split: str, classes: dict[str, list[str]], labels) -> None:
    expected_classes = len(set(labels.values())) if labels is not None else SPLITS[split]
    problems = []
    if len(classes) != expected_classes:
        problems.append(f"{len(classes)} classes (expected {expected_classes})")
    if labels is not None and sum(map(len, classes.values())) != len(labels):
        problems.append(f"{sum(map(len, classes.values()))} of the {len(labels)} images its CSV lists")
    sizes = {len(m) for m in classes.values()}
    if len(sizes) > 1:
        problems.append(f"classes with {min(sizes)} to {max(sizes)} images (all need the same number)")
    if problems or not classes:
        raise DataError(f"{source} is incomplete for split {split!r}: {'; '.join(problems) or 'no images'}. "
                        "Replace it with the complete files (see data/README.md).")


def build(split: str, source: Path, *, size: int = DEFAULT_SIZE, progress: bool = True) -> dict:
    """Decode one split: ``{"images": uint8 [classes, per_class, 3, size, size], "class_names": wnids, ...}``."""
    files: dict[str, bytes] = {}
    labels = _csv_beside(source, split)
    for name, data in iter_files(source, progress=progress):
        if PurePosixPath(name).name == f"{split}.csv":
            labels = _read_csv(data)
        elif PurePosixPath(name).suffix.lower() in _IMAGE_SUFFIXES:
            files[name] = data
    classes = _classify(source, split, list(files), labels)
    blobs = [files[m] for members in classes.values() for m in members]
    pixels = _decode.decode_images(blobs, size=size, mode="RGB", progress=progress, desc=f"mini-imagenet {split}")
    per_class = len(next(iter(classes.values())))
    images = torch.from_numpy(pixels).reshape(len(classes), per_class, 3, size, size)
    return {"version": CACHE_VERSION, "images": images, "class_names": list(classes), "size": size}


def cache_path(split: str, cache=None, size: int = DEFAULT_SIZE) -> Path:
    return _cache_dir(cache) / f"{NAME}-{size}-{split}.pt"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"Unknown mini-ImageNet split {split!r}: use one of {', '.join(SPLITS)}.")


def prepare(split: str, *, root=None, cache_dir=None, image_size: int | None = None, progress: bool = True,
            force: bool = False) -> dict:
    """The cache dict of ``split`` (memory-mapped), building it first if absent (or ``force``)."""
    _check_split(split)
    size = cache.image_size(image_size, DEFAULT_SIZE)
    path = cache_path(split, cache_dir, size)
    content = None if force else load_cache(path)
    if content is None:
        cache.ensure_writable(path)
        atomic_save(build(split, find_source_for(split, root), size=size, progress=progress), path)
        content = load_cache(path)
    return content


def load(split: str, *, root=None, cache_dir=None, image_size: int | None = None, download: bool = True,
         progress: bool = True) -> FewShotDataset:
    """One split as a :class:`FewShotDataset` (``images`` uint8 ``[C, 600, 3, S, S]``, memory-mapped)."""
    content = prepare(split, root=root, cache_dir=cache_dir, image_size=image_size, progress=progress)
    return FewShotDataset(images=content["images"], class_names=list(content["class_names"]), name=NAME,
                          split=split)


def describe(*, root=None, cache_dir=None) -> dict:
    """Classes and images per split: from the cache if built, else from file names and CSVs (no decoding)."""
    splits, sources = {}, []
    for split in SPLITS:
        try:
            content = load_cache(cache_path(split, cache_dir))
            if content is not None:
                classes, per_class = content["images"].shape[:2]
                sources.append(str(cache_path(split, cache_dir)))
            else:
                source = find_source_for(split, root)
                csv_name = f"{split}.csv"
                names, labels = [], _csv_beside(source, split)
                wanted = lambda n, csv_name=csv_name: PurePosixPath(n).name == csv_name  # noqa: E731
                for name, data in iter_files(source, keep=wanted):
                    names.append(name)
                    if data is not None:
                        labels = _read_csv(data)
                found = _classify(source, split, names, labels)
                classes, per_class = len(found), len(next(iter(found.values())))
                sources.append(str(source))
            splits[split] = {"classes": classes, "per_class": per_class, "images": classes * per_class}
        except DataError as exc:
            splits[split] = {"error": str(exc)}
    return {"source": ", ".join(sources), "splits": splits}



def _prepare_lines(splits, *, root=None, cache_dir=None, image_size=None, progress=True, force=False,
                   download=True) -> list[str]:
    """Build the cache of each split (default: all); the lines ``python -m mtl data prepare`` prints."""
    lines = []
    for split in splits or list(SPLITS):
        content = prepare(split, root=root, cache_dir=cache_dir, image_size=image_size,
                          progress=progress, force=force)
        classes, per_class = content["images"].shape[:2]
        lines.append(f"{NAME} {split}: {classes} classes x {per_class} images -> "
                     f"{cache_path(split, cache_dir, image_size or DEFAULT_SIZE)}")
    return lines


SPEC = DatasetSpec(name=NAME, load=load, splits=dict(SPLITS), per_class=PER_CLASS, channels=(3,),
                   image_size=DEFAULT_SIZE, hidden=32, describe=describe, prepare=_prepare_lines)
