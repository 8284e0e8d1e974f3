"""Your own images: a folder of class folders, at any depth (torchvision's ``ImageFolder`` layout,
or Omniglot's own ``alphabet/character/*.png``).

    ds = load_dataset("folder:photos", "train", image_size=84)    # or load_dataset("folder", root=...)
    python -m mtl train --dataset folder:photos --ways 5 --shots 1 ...

- **Layout**: a class is a *leaf folder*, one that holds images and no sub-folders; its name is
  its path under ``ROOT`` (``ROOT/<class>/<image>`` gives ``<class>``, Omniglot's
  ``images_background/<alphabet>/<character>/<image>`` gives ``<alphabet>/<character>``). A folder
  that holds both images and sub-folders is refused (say which images belong to which class by
  moving them into a folder of their own). Hidden files and folders (``.DS_Store``) are ignored;
  any other file must be an image Pillow can read (a file that is not is named in the error).
  Symbolic links must stay inside ``ROOT``.
- **Scan**: a folder is listed once per process (`scan` keeps it); it is listed again when a
  folder of it changed (an image or class added, removed or renamed). An image edited in place
  is seen by the next process.
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
from mtl.data.spec import DatasetSpec
from mtl.errors import DataError

NAME = "folder"
DEFAULT_SIZE = 84
SPLITS = ("train", "val", "test", "all")
DEFAULT_RATIOS = (0.6, 0.2, 0.2)


#: resolved root -> (modification time of every folder listed, the scan, its fingerprint or None)
_SCANS: dict[Path, tuple[dict[Path, int], dict[str, list[Path]], list]] = {}


def scan(root: str | os.PathLike) -> dict[str, list[Path]]:
    """``{class name: [image paths]}`` of ``root`` (classes and images sorted), checked for layout and
    safety. Listed once per process and kept, listed again when one of its folders changed."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder holding one sub-folder per class")
    kept = _SCANS.get(root.resolve())
    if kept is not None and _unchanged(kept[0]):
        return kept[1]
    folders: dict[Path, int] = {}
    classes = _walk(root, folders)
    _SCANS[root.resolve()] = (folders, classes, [])
    return classes


def _unchanged(folders: dict[Path, int]) -> bool:
    try:
        return all(path.stat().st_mtime_ns == mtime for path, mtime in folders.items())
    except OSError:
        return False


def _walk(root: Path, folders: dict[Path, int]) -> dict[str, list[Path]]:
    """The leaf folders of ``root`` and their images; ``folders`` gets every folder's mtime."""
    real_root = root.resolve()
    classes: dict[str, list[Path]] = {}
    seen: set[Path] = set()

    def visit(folder: Path, name: str) -> None:
        real = folder.resolve()
        if real in seen:  # a link to a folder already listed
            return
        seen.add(real)
        folders[folder] = folder.stat().st_mtime_ns
        files, subfolders = [], []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                if entry.is_symlink():
                    _inside(path, real_root)
                if entry.is_dir():
                    subfolders.append(path)
                elif entry.is_file():
                    files.append(path)
        if files and subfolders:
            if folder == root:
                raise DataError(f"{sorted(files)[0]} is a file at the top of {root}; put every image "
                                "in a sub-folder named after its class (ROOT/<class>/<image>)")
            raise DataError(f"{folder} holds both images ({sorted(files)[0].name}, ...) and folders "
                            f"({sorted(subfolders)[0].name}, ...); a class is a folder of images "
                            "only: move these images into a folder of their own, or the folders out")
        if subfolders:
            for sub in sorted(subfolders):
                visit(sub, f"{name}/{sub.name}" if name else sub.name)
        elif folder == root:
            raise DataError(f"{root} holds no class folders: put every image in a sub-folder named "
                            "after its class (ROOT/<class>/<image>)" if files else
                            f"{root} is empty: give a folder holding one sub-folder per class")
        elif not files:
            raise DataError(f"class folder {folder} holds no images: add some or remove the folder")
        else:
            classes[name] = sorted(files)

    visit(root, "")
    if len(classes) < 2:
        raise DataError(f"{root} holds {len(classes)} class folder(s); a few-shot task needs at least "
                        "2 classes, one folder each")
    return classes


def _inside(path: Path, real_root: Path) -> None:
    if path.is_symlink() and not path.resolve().is_relative_to(real_root):
        raise DataError(f"{path} is a link to {path.resolve()}, outside {real_root}: copy the file "
                        "into the folder instead")


def fingerprint(classes: dict[str, list[Path]], root: Path) -> str:
    """A hash of the listing: relative path, size and modification time of every image (computed
    once per `scan`)."""
    kept = _SCANS.get(Path(root).resolve())
    if kept is not None and kept[1] is classes and kept[2]:
        return kept[2][0]
    digest = hashlib.sha256()
    for files in classes.values():
        for path in files:
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    key = digest.hexdigest()[:16]
    if kept is not None and kept[1] is classes:
        kept[2].append(key)
    return key


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
         invert: bool = False, progress: bool = True, download: bool = True) -> FewShotDataset:
    """One split of the folder ``root`` as a :class:`FewShotDataset` (with ``counts``);
    ``download`` is accepted as by every dataset's loader (a folder has nothing to download)."""
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


def split_lists(root) -> dict[str, list[str]]:
    """``{"train", "val", "test": [class names]}``: the default seeded cut of the folder as it is now."""
    names = list(scan(root))
    return {split: [names[i] for i in split_classes(names, split)] for split in ("train", "val", "test")}


SPEC = DatasetSpec(name=NAME, load=load, splits=dict.fromkeys(SPLITS), channels=(3, 1),
                   image_size=DEFAULT_SIZE, hidden=32, path=True, split_classes=split_lists,
                   options=("channels", "classes", "ratios", "seed", "invert"))

__all__ = ["load", "prepare", "scan", "split_classes", "split_lists", "describe", "SPEC"]
