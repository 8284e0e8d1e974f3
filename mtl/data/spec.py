"""``DatasetSpec``: what mtl needs to know about a dataset (the registry is ``mtl.data.registry``)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtl.errors import DataError

__all__ = ["DatasetSpec", "TASKS", "SPECS"]

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class DatasetSpec:
    """What mtl needs to know about a dataset.

    Attributes:
        name: the ``--dataset`` name (a dataset with ``path=True`` is named ``NAME:PATH``).
        splits: split -> number of classes; None where it is known only once loaded (a folder's).
            Runs sample from ``train``, ``val`` and ``test``.
        per_class: images per class (None: known once loaded).
        load: ``load(split, *, root, cache_dir, image_size, download, progress, **options)`` ->
            ``FewShotDataset`` (classification; ``path`` datasets get ``root=PATH``).
        tasks: ``tasks(split, *, shots, queries, device, seed)`` -> a task source with
            ``.sample(n)``, ``.episodes(n, batch_size, seed)`` and ``.generator`` (regression
            families, which have no images to load).
        task: ``"classification"`` (N-way image episodes) or ``"regression"``.
        channels: the image channels it can be loaded with, the default first (``()``: no images).
        image_size: default image side in pixels (None: no images).
        models: the ``--model`` names that fit it, the default first; ``hidden``: default width.
        inverted: polarity: True when its images are stored as negatives of the files (Omniglot:
            bright ink on black), so a new photo of dark ink on paper is inverted to match.
        options: the keyword options ``load`` takes beyond the common ones (e.g. ``rotations``).
        rotations: its ``train`` split gains the 90/180/270-degree rotations as classes (x4)
            with ``rotations=True``.
        path: named ``NAME:PATH`` (the user's own folder).
        split_classes: for ``path`` datasets, ``split_classes(PATH)`` -> ``{split: [class names]}``
            (checks the folder; a run records it).
        describe: ``describe(*, root, cache_dir)`` -> ``{"source", "splits": {split: {"classes",
            "per_class", "images"} | {"error"}}}`` without decoding (``python -m mtl data info``).
        prepare: ``prepare(splits, *, root, cache_dir, image_size, progress, force, download)`` ->
            lines to print, after building the cache (``python -m mtl data prepare``).
    """

    name: str
    splits: Mapping[str, int | None]
    per_class: int | None = None
    load: Callable[..., Any] | None = None
    tasks: Callable[..., Any] | None = None
    task: str = "classification"
    channels: tuple[int, ...] = (3,)
    image_size: int | None = 84
    models: tuple[str, ...] = ("conv4", "resnet12")
    hidden: int = 32
    inverted: bool = False
    options: tuple[str, ...] = ()
    rotations: bool = False
    path: bool = False
    split_classes: Callable[[str], dict[str, list[str]]] | None = None
    describe: Callable[..., dict] | None = None
    prepare: Callable[..., list[str]] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"dataset {self.name!r}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if (self.load is None) == (self.tasks is None):
            raise DataError(f"dataset {self.name!r} needs exactly one of load= (images) or tasks= "
                            "(a task family)")

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def sizes_known(self) -> bool:
        """Whether the split sizes are known before loading (so a config can be checked against them)."""
        return self.regression or (self.per_class is not None
                                   and all(n is not None for n in self.splits.values()))

    def train_classes(self, rotations: bool) -> int | None:
        """Classes of the ``train`` split (x4 with the rotations, where the dataset has them)."""
        n = self.splits.get("train")
        return n * 4 if n is not None and rotations and self.rotations else n

    def defaults(self) -> dict[str, Any]:
        """``TrainConfig`` fields this dataset fills when they are unset."""
        return {"model": self.models[0], "hidden": self.hidden, "image_size": self.image_size,
                "channels": self.channels[0] if self.channels else None}


#: name -> spec: the registry's storage (``mtl.data.registry.DATASETS`` is this dict, filled there),
#: here so that modules the registry imports can read it
SPECS: dict[str, DatasetSpec] = {}
