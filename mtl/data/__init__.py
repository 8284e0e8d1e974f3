"""Datasets and episodes: Omniglot, mini-ImageNet, sinusoids, and the N-way K-shot sampler.

    ds = load_dataset("omniglot", "train", rotations=True)       # FewShotDataset, uint8 [4400, 20, 1, 28, 28]
    sampler = EpisodeSampler(ds, ways=5, shots=1, queries=15, device="cuda", seed=0)
    batch = sampler.sample(32)                                     # TaskBatch, support_x [32, 5, 1, 28, 28]
    for batch in sampler.episodes(600, batch_size=50, seed=1): ...  # fixed evaluation set

Files are looked for in ``root`` / ``$MTL_DATA`` / the repository's ``data/``, cached under
``cache_dir`` / ``$MTL_CACHE`` / ``data/cache`` (see :mod:`mtl.data.cache`), and Omniglot alone is
downloaded when missing.
"""
from __future__ import annotations

from mtl.data.dataset import FewShotDataset
from mtl.data.episodes import EpisodeSampler, TaskBatch
from mtl.data.sinusoid import SinusoidTasks
from mtl.errors import DataError

__all__ = ["DATASETS", "EpisodeSampler", "FewShotDataset", "SinusoidTasks", "TaskBatch", "load_dataset"]

#: dataset name -> its splits
DATASETS = {
    "omniglot": ("train", "val", "test", "background", "evaluation", "all"),
    "mini-imagenet": ("train", "val", "test"),
    "folder": ("train", "val", "test", "all"),
}


def load_dataset(name: str, split: str, *, root=None, cache_dir=None, image_size: int | None = None,
                 download: bool = True, progress: bool = True, rotations: bool = False,
                 channels: int | None = None, **folder_options) -> FewShotDataset:
    """One split of a dataset as a :class:`FewShotDataset` (uint8 ``[classes, per_class, C, H, W]``, CPU).

    Args:
        name: ``"omniglot"`` or ``"mini-imagenet"``.
        split: omniglot ``train``/``val``/``test`` (MAML split 1100/100/423), ``background``/``evaluation``
            (alphabet split) or ``all``; mini-imagenet ``train``/``val``/``test`` (Ravi split 64/16/20).
        root: folder with the files (default ``$MTL_DATA``, else the repository's ``data/``).
        cache_dir: cache folder (see mtl.data.cache).
        image_size: side in pixels (default 28 for Omniglot, 84 for mini-ImageNet); each size is cached.
        download: allow downloading Omniglot from its official source (checksum-verified).
        progress: show progress bars while building a cache (also off with ``MTL_PROGRESS=0``).
        rotations: Omniglot only; adds 90/180/270-degree rotations as new classes (x4, MAML protocol).
        channels: a folder dataset's 1 (grayscale) or 3 (RGB, default).
        folder_options: a folder dataset's ``classes``, ``ratios``, ``seed``, ``invert`` (see
            ``mtl.data.folder.load``).

    ``name`` may be ``"folder:PATH"`` (one sub-folder per class), the same as ``"folder"`` with
    ``root=PATH``.
    """
    from mtl.data import folder

    name, path = folder.parse_name(name)
    if name == "folder":
        if rotations:
            raise DataError("rotations=True is for Omniglot only; drop it for a folder dataset.")
        if path is None and root is None:
            raise DataError("a folder dataset needs its folder: load_dataset('folder:PATH', ...) "
                            "or root=PATH")
        return folder.load(split, root=path or root, cache_dir=cache_dir, image_size=image_size,
                           channels=3 if channels is None else channels, progress=progress,
                           **folder_options)
    if folder_options:
        raise DataError(f"{sorted(folder_options)} are options of folder datasets, not of {name}")
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}: use one of omniglot, mini-imagenet or "
                        "folder:PATH (your own images, one sub-folder per class).")
    if split not in DATASETS[name]:
        raise DataError(f"Unknown {name} split {split!r}: use one of {', '.join(DATASETS[name])}.")
    common = dict(root=root, cache_dir=cache_dir, image_size=image_size, download=download, progress=progress)
    if name == "omniglot":
        from mtl.data import omniglot

        return omniglot.load(split, rotations=rotations, **common)
    if rotations:
        raise DataError("rotations=True is for Omniglot only; drop it for mini-ImageNet.")
    from mtl.data import miniimagenet

    return miniimagenet.load(split, **common)
