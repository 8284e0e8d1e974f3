"""Datasets and episodes: Omniglot, mini-ImageNet, sinusoids, your own folders, the N-way K-shot sampler.

    ds = load_dataset("omniglot", "train", rotations=True)       # FewShotDataset, uint8 [4400, 20, 1, 28, 28]
    sampler = EpisodeSampler(ds, ways=5, shots=1, queries=15, device="cuda", seed=0)
    batch = sampler.sample(32)                                     # TaskBatch, support_x [32, 5, 1, 28, 28]
    for batch in sampler.episodes(600, batch_size=50, seed=1): ...  # fixed evaluation set

Files are looked for in ``root`` / ``$MTL_DATA`` / the repository's ``data/``, cached under
``cache_dir`` / ``$MTL_CACHE`` / ``data/cache`` (see :mod:`mtl.data.cache`), and Omniglot alone is
downloaded when missing. What mtl knows of each dataset is its :class:`DatasetSpec` in the registry
(:mod:`mtl.data.registry`, :data:`DATASETS`).
"""
from __future__ import annotations

from mtl.data.dataset import FewShotDataset
from mtl.data.episodes import EpisodeSampler, TaskBatch
from mtl.data.registry import DATASETS, dataset_spec, parse_name, register_dataset
from mtl.data.sinusoid import SinusoidTasks
from mtl.data.spec import DatasetSpec
from mtl.errors import DataError

__all__ = ["DATASETS", "DatasetSpec", "EpisodeSampler", "FewShotDataset", "SinusoidTasks", "TaskBatch",
           "dataset_spec", "load_dataset", "register_dataset", "task_source"]


def load_dataset(name: str, split: str, *, root=None, cache_dir=None, image_size: int | None = None,
                 download: bool = True, progress: bool = True, rotations: bool = False,
                 channels: int | None = None, **options) -> FewShotDataset:
    """One split of a dataset as a :class:`FewShotDataset` (uint8 ``[classes, per_class, C, H, W]``, CPU).

    Args:
        name: a name of :data:`DATASETS` (``"omniglot"``, ``"mini-imagenet"``, ...) or
            ``"folder:PATH"`` (your own images, a folder per class; the same as ``"folder"`` with
            ``root=PATH``).
        split: omniglot ``train``/``val``/``test`` (MAML split 1100/100/423), ``background``/``evaluation``
            (alphabet split) or ``all``; mini-imagenet ``train``/``val``/``test`` (Ravi split 64/16/20);
            a folder's ``train``/``val``/``test``/``all`` (see ``mtl.data.folder``).
        root: folder with the files (default ``$MTL_DATA``, else the repository's ``data/``).
        cache_dir: cache folder (see mtl.data.cache).
        image_size: side in pixels (default: the dataset's, 28 for Omniglot, 84 otherwise); each size is cached.
        download: allow downloading a dataset that can be (Omniglot, checksum-verified).
        progress: show progress bars while building a cache (also off with ``MTL_PROGRESS=0``).
        rotations: adds the 90/180/270-degree rotations as new classes (x4, MAML protocol), for
            datasets whose spec has ``rotations`` (Omniglot).
        channels: 1 (grayscale) or 3 (RGB), among those the dataset's spec allows (a folder's:
            3 by default, or 1).
        options: the dataset's own options (its spec's ``options``; a folder's ``classes``,
            ``ratios``, ``seed``, ``invert``, see ``mtl.data.folder.load``).
    """
    spec, path = parse_name(name)
    if spec.load is None:
        raise DataError(f"{spec.name} is a family of {spec.task} tasks with no images to load: draw "
                        f"them with mtl.data.task_source({spec.name!r}, split, ...)")
    if spec.path:
        if path is None and root is None:
            raise DataError(f"a {spec.name} dataset needs its folder: load_dataset('{spec.name}:PATH', ...) "
                            "or root=PATH")
        root = path or root
    if split not in spec.splits:
        raise DataError(f"Unknown {spec.name} split {split!r}: use one of {', '.join(spec.splits)}.")
    if rotations:
        if not spec.rotations:
            raise DataError(f"rotations=True adds rotated classes to datasets that have them; "
                            f"{spec.name} has none: drop it")
        options["rotations"] = True
    if channels is not None:
        if channels not in spec.channels:
            raise DataError(f"{spec.name} is loaded with {' or '.join(map(str, spec.channels))} "
                            f"channel(s), not {channels!r}: drop channels= or use one of those")
        if "channels" in spec.options:
            options["channels"] = channels
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise DataError(f"{unknown} are not options of {spec.name} (its options: "
                        f"{', '.join(spec.options) or 'none'})")
    return spec.load(split, root=root, cache_dir=cache_dir, image_size=image_size, download=download,
                     progress=progress, **options)


def task_source(name: str, split: str, *, ways: int, shots: int, queries: int,
                device=None, seed: int = 0, **load_options):
    """The tasks of ``split``: ``ways``-way episodes of the loaded images (an :class:`EpisodeSampler`),
    or the dataset's own task family (``SinusoidTasks``); ``load_options`` go to `load_dataset`."""
    spec = dataset_spec(name)
    if spec.tasks is not None:
        return spec.tasks(split, shots=shots, queries=queries, device=device, seed=seed)
    dataset = load_dataset(name, split, **load_options)
    return EpisodeSampler(dataset.to(device), ways=ways, shots=shots, queries=queries, device=device,
                          seed=seed)
