"""Decode many small images into one uint8 array, on all cores (a process pool) with a progress bar.

Only numpy and Pillow are used here, so worker processes stay light.
"""
from __future__ import annotations

import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
from PIL import Image

from mtl.data._progress import progress_bar

_CHUNK = 512


def _decode_chunk(blobs: list[bytes], size: int, mode: str, invert: bool) -> np.ndarray:
    """``[n, size, size]`` (mode 'L') or ``[n, size, size, 3]`` (mode 'RGB') uint8."""
    out = np.empty((len(blobs), size, size) + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as image:
            image = image.convert(mode)
            if image.size != (size, size):
                # Area-weighted (BOX) filter: a pixel's value is the fraction of ink it covers.
                image = image.resize((size, size), Image.Resampling.BOX)
            out[i] = np.asarray(image)
    return 255 - out if invert else out


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def decode_images(blobs: list[bytes], *, size: int, mode: str, invert: bool = False,
                  progress: bool = True, desc: str = "decoding") -> np.ndarray:
    """Decode encoded images (PNG/JPEG bytes) to uint8, resized to ``size`` x ``size``.

    Returns ``[n, size, size]`` for ``mode='L'`` (``invert=True`` gives 255 - value) or
    ``[n, size, size, 3]`` for ``mode='RGB'``, in the order of ``blobs``.
    """
    chunks = [blobs[i:i + _CHUNK] for i in range(0, len(blobs), _CHUNK)]
    work = partial(_decode_chunk, size=size, mode=mode, invert=invert)
    bar = progress_bar(total=len(blobs), unit="img", desc=desc, progress=progress)
    parts = []
    with bar:
        if _workers() == 1 or len(chunks) == 1:
            for chunk in chunks:
                parts.append(work(chunk))
                bar.update(len(chunk))
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            with ProcessPoolExecutor(_workers(), mp_context=context) as pool:
                for chunk, part in zip(chunks, pool.map(work, chunks)):
                    parts.append(part)
                    bar.update(len(chunk))
    if not parts:
        return np.empty((0, size, size) + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
    return np.concatenate(parts)
