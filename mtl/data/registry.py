"""The one registry of datasets: name -> :class:`DatasetSpec`.

``load_dataset``, the config checks and defaults (``mtl.engine.config``), the model builder, the
few-shot classifier and ``python -m mtl data`` read a dataset's facts from its spec, never from its
name. Adding a dataset is one file that defines ``SPEC = DatasetSpec(...)`` (see
``mtl/data/miniimagenet.py``) and one entry in :data:`DATASETS` below, or, without editing mtl,
``register_dataset(SPEC)``::

    SPEC = DatasetSpec(name="cifar-fs", load=load, splits={"train": 64, "val": 16, "test": 20},
                       per_class=600, channels=(3,), image_size=32)
"""
from __future__ import annotations

from mtl.data import folder, miniimagenet, omniglot, sinusoid
from mtl.data.spec import SPECS, DatasetSpec
from mtl.errors import DataError

__all__ = ["DatasetSpec", "DATASETS", "dataset_spec", "register_dataset", "parse_name", "names"]

#: name -> spec of every dataset mtl knows (``register_dataset`` adds more)
DATASETS: dict[str, DatasetSpec] = SPECS
DATASETS.update({spec.name: spec for spec in (
    sinusoid.SPEC,
    omniglot.SPEC,
    miniimagenet.SPEC,
    folder.SPEC,
)})


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make ``spec.name`` usable as ``--dataset`` (and in ``load_dataset``, ``TrainConfig``)."""
    if not isinstance(spec, DatasetSpec):
        raise DataError(f"register_dataset needs a mtl.data.DatasetSpec, got {spec!r}")
    if ":" in spec.name or not spec.name:
        raise DataError(f"a dataset name is a non-empty word without ':', got {spec.name!r}")
    DATASETS[spec.name] = spec
    return spec


def names() -> list[str]:
    """The dataset names, ``path`` datasets written ``NAME:PATH``."""
    return [f"{n}:PATH" if s.path else n for n, s in DATASETS.items()]


def parse_name(name: str) -> tuple[DatasetSpec, str | None]:
    """``"folder:PATH"`` -> ``(folder's spec, PATH)``; ``"omniglot"`` -> ``(its spec, None)``.

    A ``DataError`` names the choices for an unknown name, and refuses ``NAME:`` with an empty
    path or a path given to a dataset that takes none."""
    if not isinstance(name, str):
        raise DataError(f"a dataset name is a string, got {name!r}")
    base, sep, path = name.partition(":")
    if base not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: use one of {', '.join(names())} "
                        "(NAME:PATH: your own images, a folder of class folders)")
    spec = DATASETS[base]
    if spec.path and sep and not path:
        raise DataError(f"--dataset {base}:PATH needs the folder's path after '{base}:'")
    if not spec.path and sep:
        raise DataError(f"dataset {base!r} takes no path: use --dataset {base}")
    return spec, (path or None)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name`` (``"folder:PATH"`` gives the folder spec)."""
    return parse_name(name)[0]
