"""Shared fixtures.

- ``omniglot_sources`` / ``mini_imagenet_data``: the real datasets under the data folder (``$MTL_DATA``,
  else the repository's ``data/``); tests that need one are skipped, with the reason printed
  (``-ra``), only when it is absent. Omniglot can be downloaded, mini-ImageNet cannot: a user with
  Omniglot alone runs every test but those of ``mini_imagenet_data``.
- ``omniglot_cache``: a cache folder holding the real Omniglot cache, built once per test session.
- ``make_png`` / ``make_jpeg``: tiny encoded images for synthetic archives.
- every test runs with one intra-op torch thread (tiny networks are faster so, and CI runs two
  test workers on two cores).
- every test leaves ``mtl.algorithms.ALGORITHMS`` as it found it: a class a test registers is gone
  after it, so no test sees another's algorithms, whatever order a worker runs them in.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest



@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _registry_restored():
    from mtl.algorithms import ALGORITHMS

    before = dict(ALGORITHMS)
    yield
    ALGORITHMS.clear()
    ALGORITHMS.update(before)


@pytest.fixture(scope="session")
def omniglot_sources() -> dict[str, Path]:
    """``{part: archive or folder}`` of the real Omniglot; skips (with the reason) when it is absent."""
    from mtl.data import omniglot
    from mtl.errors import DataError

    try:
        return omniglot.find_sources(download=False)
    except DataError as exc:
        pytest.skip(f"real Omniglot not found ({exc}) `python -m mtl data prepare --dataset omniglot` "
                    "downloads it")


@pytest.fixture(scope="session")
def mini_imagenet_data() -> Path:
    """The data folder holding the real mini-ImageNet; skips (with the reason) when a split is absent."""
    from mtl.data import miniimagenet
    from mtl.data.cache import data_root
    from mtl.errors import DataError

    try:
        for split in miniimagenet.SPLITS:
            miniimagenet.find_source_for(split)
    except DataError as exc:
        pytest.skip(f"real mini-ImageNet not found: {exc}")
    return data_root()


@pytest.fixture(scope="session")
def omniglot_cache(omniglot_sources, tmp_path_factory) -> Path:
    """A fresh cache folder with the real Omniglot 28x28 cache, built once per session (~10 s on 2 cores)."""
    from mtl.data import omniglot
    from mtl.data.cache import atomic_save

    cache = tmp_path_factory.mktemp("omniglot-cache")
    atomic_save(omniglot.build(omniglot_sources, progress=False), omniglot.cache_path(cache))
    return cache


def _encode(image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def make_png():
    """``make_png(value, size=105)`` -> PNG bytes of a mode-'1' image, white with a black square of ink."""
    from PIL import Image, ImageDraw

    def make(value: int = 0, size: int = 105) -> bytes:
        image = Image.new("1", (size, size), 1)
        draw = ImageDraw.Draw(image)
        offset = 5 + value % 40
        draw.rectangle([offset, offset, offset + 30, offset + 30], fill=0)
        return _encode(image, "PNG")

    return make


@pytest.fixture
def make_jpeg():
    """``make_jpeg(rgb, size=84)`` -> JPEG bytes of a uniform RGB image."""
    from PIL import Image

    def make(rgb: tuple[int, int, int], size: int = 84) -> bytes:
        return _encode(Image.new("RGB", (size, size), rgb), "JPEG")

    return make
