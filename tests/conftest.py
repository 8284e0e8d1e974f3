"""Shared fixtures.

- ``shared_data``: the real datasets folder (``$MTL_DATA``, else ``../shared/data`` beside the repo);
  tests that need it are skipped, with the reason printed (``-ra``), only when it is absent.
- ``omniglot_cache``: a cache folder holding the real Omniglot cache, built once per test session.
- ``make_png`` / ``make_jpeg``: tiny encoded images for synthetic archives.
- every test runs with one intra-op torch thread (tiny networks are faster so, and CI runs two
  test workers on two cores).
- every test leaves ``mtl.algorithms.ALGORITHMS`` as it found it: a class a test registers is gone
  after it, so no test sees another's algorithms, whatever order a worker runs them in.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


def _shared_data_path() -> Path:
    return Path(os.environ.get("MTL_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets folder; skips (with the reason) when it is absent."""
    path = _shared_data_path()
    if not (path / "omniglot").is_dir() or not (path / "mini-imagenet").is_dir():
        pytest.skip(f"real datasets not found at {path} (set MTL_DATA to the folder holding "
                    "omniglot/ and mini-imagenet/, see data/README.md)")
    return path


@pytest.fixture(scope="session")
def omniglot_cache(shared_data, tmp_path_factory) -> Path:
    """A fresh cache folder with the real Omniglot 28x28 cache, built once per session (~10 s on 2 cores)."""
    from mtl.data import omniglot

    cache = tmp_path_factory.mktemp("omniglot-cache")
    omniglot.prepare(root=shared_data, cache_dir=cache, download=False, progress=False)
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
