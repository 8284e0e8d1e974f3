"""Your own images: one sub-folder per class (torchvision's ``ImageFolder`` layout).

    ds = load_dataset("folder:photos", "train", image_size=84)    # or load_dataset("folder", root=...)
    python -m mtl train --dataset folder:photos --ways 5 --shots 1 ...

- **Layout**: ``ROOT/<class>/<image>``; hidden files (``.DS_Store``) are ignored; any other file
  must be an image Pillow can read (a file that is not is named in the error). Symbolic links
  must stay inside ``ROOT``.
- **Images**: converted to ``"RGB"`` (3 channels) or ``"L"`` (1), resized to ``image_size`` square
  (area filter, aspect ratio not kept); images of other sizes or modes are converted and counted.
- **Splits** (of classes, disjoint): ``classes={"train": [...], "val": [...], "test": [...]}``, or
  by default a seeded shuffle of the sorted class names cut at ``ratios`` (0.6 / 0.2 / 0.2);
  ``"all"`` is every class. The same folder, seed and ratios give the same split on any machine.
- **Cache**: one uint8 file per (folder, size, mode), in the cache folder, named by a hash of the
  folder's listing (relative paths, sizes, modification times): adding, removing or editing an
  image builds a new cache. Classes may hold different numbers of images: ``images`` is padded to
  the largest class and ``counts`` says how many of each row are real.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from PIL import Image

from mtl.data import _decode, cache
from mtl.data.dataset import FewShotDataset
from mtl.errors import DataError

NAME = "folder"
DEFAULT_SIZE = 84
SPLITS = ("train", "val", "test", "all")
DEFAULT_RATIOS = (0.6, 0.2, 0.2)


def scan(root: str | os.PathLike) -> dict[str, list[Path]]:
    """``{class name: [image paths]}`` of ``root`` (sorted), checked for layout and safety."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder holding one sub-folder per class")
    real_root = root.resolve()
    classes: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        _inside(entry, real_root)
        if not entry.is_dir():
            raise DataError(f"{entry} is a file at the top of {root}; put every image in a sub-folder "
                            "named after its class (ROOT/<class>/<image>)")
        files = []
        for path in sorted(entry.rglob("*")):
            if path.name.startswith(".") or any(p.startswith(".") for p in path.relative_to(entry).parts):
                continue
            _inside(path, real_root)
            if path.is_file():
                files.append(path)
        if not files:
            raise DataError(f"class folder {entry} holds no images: add some or remove the folder")
        classes[entry.name] = files
    if len(classes) < 2:
        raise DataError(f"{root} holds {len(classes)} class folder(s); a few-shot task needs at least "
                        "2 classes, one sub-folder each")
    return classes


def _inside(path: Path, real_root: Path) -> None:
    if path.is_symlink() and not path.resolve().is_relative_to(real_root):
        raise DataError(f"{path} is a link to {path.resolve()}, outside {real_root}: copy the file "
                        "into the folder instead")


def fingerprint(classes: dict[str, list[Path]], root: Path) -> str:
    """A hash of the listing: relative path, size and modification time of every image."""
    digest = hashlib.sha256()
    for files in classes.values():
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build(root: str | os.PathLike, *, size: int, mode: str, invert: bool = False,
          progress: bool = True, classes: dict[str, list[Path]] | None = None) -> dict:
    """Decode the folder: ``{"images": uint8 [C, max_n, ch, S, S], "counts": [C], "class_names", ...}``.

    ``classes``: the folder's ``scan`` when the caller already has it (else it is scanned here).
    """
    root = Path(root).expanduser()
    classes = scan(root) if classes is None else classes
    paths = [p for files in classes.values() for p in files]
    blobs = [p.read_bytes() for p in paths]
    converted = _converted(paths, size, mode)
    try:
        pixels = _decode.decode_images(blobs, size=size, mode=mode, invert=invert, progress=progress,
                                       desc=root.name)
    except DataError:
        raise DataError(f"{_first_unreadable(paths)} is not an image Pillow can read: remove it or "
                        "replace it with a PNG/JPEG copy") from None
    pixels = torch.from_numpy(pixels)
    if pixels.dim() == 3:
        pixels = pixels[:, None]
    counts = torch.tensor([len(files) for files in classes.values()])
    images = torch.zeros(len(classes), int(counts.max()), *pixels.shape[1:], dtype=torch.uint8)
    start = 0
    for row, n in enumerate(counts.tolist()):
        images[row, :n] = pixels[start:start + n]
        start += n
    return {"version": cache.CACHE_VERSION, "images": images, "counts": counts,
            "class_names": list(classes), "converted": converted, "source": str(root),
            "size": size, "mode": mode}


def _converted(paths: list[Path], size: int, mode: str) -> int:
    """How many images are not already ``size`` x ``size`` in ``mode`` (they are converted)."""
    count = 0
    for path in paths:
        try:
            with Image.open(path) as image:
                count += image.size != (size, size) or image.mode != mode
        except (OSError, ValueError):
            continue  # unreadable: reported by the decoder, with its name
    return count


def _first_unreadable(paths: list[Path]) -> Path:
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, ValueError, Image.DecompressionBombError):
            return path
    return paths[0]


def cache_path(root: Path, classes: dict[str, list[Path]], cache_dir, size: int, mode: str) -> Path:
    key = fingerprint(classes, root)
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in root.resolve().name)[:40]
    return cache.cache_dir(cache_dir) / "folder" / f"{slug}-{key}-{mode}-{size}.pt"


def prepare(root, *, cache_dir=None, image_size: int | None = None, channels: int = 3,
            invert: bool = False, progress: bool = True) -> dict:
    """The cache dict of the folder (memory-mapped), building it first if absent or outdated."""
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    mode = "L" if channels == 1 else "RGB"
    size = cache.image_size(image_size, DEFAULT_SIZE)
    root = Path(root).expanduser()
    classes = scan(root)
    path = cache_path(root, classes, cache_dir, size, mode + ("-inverted" if invert else ""))
    content = cache.load_cache(path)
    if content is None:
        cache.ensure_writable(path)
        built = build(root, size=size, mode=mode, invert=invert, progress=progress, classes=classes)
        if built["converted"]:
            warnings.warn(f"{built['converted']} of {int(built['counts'].sum())} images of {root} "
                          f"were not {size} x {size} {mode}: they were converted (resized to a "
                          "square, aspect ratio not kept)", stacklevel=2)
        cache.atomic_save(built, path)
        content = cache.load_cache(path)
    return content


def split_classes(names: list[str], split: str, *, classes: dict[str, list[str]] | None = None,
                  ratios: tuple[float, float, float] = DEFAULT_RATIOS, seed: int = 0) -> list[int]:
    """Row ids of ``names`` in ``split``: from the given lists, or a seeded cut at ``ratios``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} of a folder dataset: use one of {', '.join(SPLITS)}")
    if split == "all":
        return list(range(len(names)))
    if classes is not None:
        unknown = sorted(set(classes.get(split, [])) - set(names))
        if unknown:
            raise DataError(f"classes {unknown[:5]} of split {split!r} are not folders of the dataset: "
                            "put those class folders back (a run records the classes of each split), "
                            "or train a new run on the folder as it is")
        seen: dict[str, str] = {}
        for other, members in classes.items():
            for member in members:
                if member in seen and seen[member] != other:
                    raise DataError(f"class {member!r} is in both {seen[member]!r} and {other!r}: "
                                    "splits must be disjoint")
                seen[member] = other
        return [names.index(c) for c in classes.get(split, [])]
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise DataError(f"ratios must be three fractions (train, val, test) adding up to 1, got {ratios}")
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = round(ratios[0] * len(names))
    n_val = round(ratios[1] * len(names))
    cut = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
           "test": order[n_train + n_val:]}
    return sorted(cut[split])


def load(split: str, *, root, cache_dir=None, image_size: int | None = None, channels: int = 3,
         classes: dict[str, list[str]] | None = None, ratios=DEFAULT_RATIOS, seed: int = 0,
         invert: bool = False, progress: bool = True) -> FewShotDataset:
    """One split of the folder ``root`` as a :class:`FewShotDataset` (with ``counts``)."""
    content = prepare(root, cache_dir=cache_dir, image_size=image_size, channels=channels,
                      invert=invert, progress=progress)
    names = list(content["class_names"])
    rows = split_classes(names, split, classes=classes, ratios=ratios, seed=seed)
    if len(rows) < 2:
        raise DataError(f"split {split!r} of {root} has {len(rows)} class(es): a task needs at least 2; "
                        "add class folders or give the split more classes (classes= or ratios=)")
    index = torch.tensor(rows)
    counts = content["counts"][index]
    images = content["images"][index][:, : int(counts.max())]
    return FewShotDataset(images=images, class_names=[names[r] for r in rows], name=NAME,
                          split=split, counts=counts)


def describe(root, *, cache_dir=None) -> dict:
    """What the folder holds, without decoding: classes, images per class."""
    classes = scan(root)
    sizes = [len(f) for f in classes.values()]
    return {"source": str(root), "classes": len(classes), "images": sum(sizes),
            "per_class_min": min(sizes), "per_class_max": max(sizes)}


def parse_name(name: str) -> tuple[str, str | None]:
    """``"folder:PATH"`` -> ``("folder", PATH)``; any other name -> ``(name, None)``."""
    if name.startswith("folder:"):
        path = name[len("folder:"):]
        if not path:
            raise DataError("--dataset folder:PATH needs the folder's path after 'folder:'")
        return NAME, path
    return name, None


__all__ = ["load", "prepare", "scan", "split_classes", "describe", "parse_name"]
