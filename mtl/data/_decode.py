"""Decode many small images into one uint8 array, on all cores (a process pool) with a progress bar.

Workers only use numpy and Pillow (no torch), so forking them is safe and cheap.
"""
from __future__ import annotations

import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
from PIL import Image

from mtl.io import progress_bar
from mtl.errors import DataError

_CHUNK = 512
#: the most pixels one image may claim (checked from its header, before it is decoded)
MAX_PIXELS = 50_000_000


def check_pixels(image: Image.Image, name: object = "an image") -> None:
    """`DataError` naming the fix when ``image`` claims more than `MAX_PIXELS` pixels."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise DataError(f"{name} claims {width} x {height} = {width * height:,} pixels, more than the "
                        f"{MAX_PIXELS:,} mtl decodes: resize it (the models use a few thousand pixels)")


def to_8bit(image: Image.Image, mode: str) -> tuple[Image.Image, bool]:
    """``image`` in ``mode`` ('L' or 'RGB'), 8 bits per channel, and whether its pixels were
    rescaled: 16-bit integer pixels are divided by 257 (65535 -> 255), float pixels in [0, 1]
    multiplied by 255 and others stretched from their own minimum to maximum, once. Pillow's own
    conversion would clip them to 0..255 (a 16-bit image turns white)."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return image.convert(mode), False
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode != "F":
        top = 65535.0 if pixels.max(initial=0) <= 65535 else float(pixels.max())
        scaled = pixels * (255.0 / top)
    else:
        low, high = float(np.nanmin(pixels, initial=0)), float(np.nanmax(pixels, initial=0))
        if low >= 0 and high <= 1:
            scaled = pixels * 255.0
        else:
            scaled = (pixels - low) * (255.0 / (high - low or 1.0))
    eight = Image.fromarray(np.nan_to_num(scaled).round().clip(0, 255).astype(np.uint8), "L")
    return eight.convert(mode), True


def _shape(n: int, size: int, mode: str) -> tuple[int, ...]:
    return (n, 3, size, size) if mode == "RGB" else (n, size, size)


def _decode_chunk(blobs: list[bytes], size: int, mode: str, invert: bool) -> np.ndarray:
    """``[n, size, size]`` (mode 'L') or ``[n, 3, size, size]`` (mode 'RGB', channels first) uint8."""
    out = np.empty(_shape(len(blobs), size, mode), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        with Image.open(io.BytesIO(blob)) as image:
            check_pixels(image)
            image, _ = to_8bit(image, mode)
            if image.size != (size, size):
                # Area-weighted (BOX) filter: a pixel's value is the fraction of ink it covers.
                image = image.resize((size, size), Image.Resampling.BOX)
            pixels = np.asarray(image)
            out[i] = pixels.transpose(2, 0, 1) if mode == "RGB" else pixels
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
    ``[n, 3, size, size]`` for ``mode='RGB'``, in the order of ``blobs``. A bad image raises
    :class:`DataError`.
    """
    out = np.empty(_shape(len(blobs), size, mode), dtype=np.uint8)
    chunks = [blobs[i:i + _CHUNK] for i in range(0, len(blobs), _CHUNK)]
    work = partial(_decode_chunk, size=size, mode=mode, invert=invert)
    bar = progress_bar(total=len(blobs), unit="img", desc=desc, progress=progress)
    try:
        with bar:
            if _workers() == 1 or len(chunks) <= 1:
                parts = map(work, chunks)
                _fill(out, chunks, parts, bar)
            else:
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                with ProcessPoolExecutor(_workers(), mp_context=multiprocessing.get_context(method)) as pool:
                    _fill(out, chunks, pool.map(work, chunks), bar)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"An image could not be decoded ({exc}): the {desc} files are corrupted; "
                        "replace them with complete copies.") from exc
    return out


def _fill(out: np.ndarray, chunks: list, parts, bar) -> None:
    start = 0
    for chunk, part in zip(chunks, parts):
        out[start:start + len(chunk)] = part
        start += len(chunk)
        bar.update(len(chunk))
