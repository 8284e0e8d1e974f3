"""A new alphabet, drawn on the spot: symbols no Omniglot alphabet has, several "drawers" each.

    root = write_alphabet("symbols")          # symbols/<character>/<drawer>.png, black on white
    python -m mtl adapt --checkpoint RUN --support ... --query ...

Characters are mathematical symbols, arrows, card suits and Ogham letters, rendered from the
DejaVu fonts that matplotlib ships (so every machine has them). A character's drawers differ in
font (regular, bold, oblique, serif, mono: whichever of them has the glyph), stroke width and a
small seeded affine jitter (rotation, shear, scale, shift), the way Omniglot's 20 people drew each
character a little differently. The same ``seed`` gives the same images with the same Pillow
(which bundles its own FreeType).
"""
from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["CHARACTERS", "write_alphabet", "fonts_for"]

#: the new alphabet: 39 characters absent from Omniglot's 50 alphabets
CHARACTERS = ("∑∏∫∂∇≈≠≤≥∞√⊕⊗∀∃"   # mathematics
              "←↑→↓↔↕⇒⇔"          # arrows
              "♠♣♥♦♪☀"            # signs
              "ᚁᚂᚃᚄᚅᚆᚇᚈᚉᚊ")        # Ogham
_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
          "DejaVuSans-Oblique.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
          "DejaVuSansMono-Bold.ttf")


def _font_folder() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def fonts_for(character: str) -> list[Path]:
    """The shipped fonts that have a glyph for ``character``."""
    from matplotlib.ft2font import FT2Font

    found = []
    for name in _FONTS:
        path = _font_folder() / name
        if path.is_file() and ord(character) in FT2Font(str(path)).get_charmap():
            found.append(path)
    return found


def _draw(character: str, font: Path, stroke: int, jitter: np.ndarray, size: int) -> Image.Image:
    canvas = 3 * size
    image = Image.new("L", (canvas, canvas), 255)
    draw = ImageDraw.Draw(image)
    face = ImageFont.truetype(str(font), size=size)
    left, top, right, bottom = draw.textbbox((0, 0), character, font=face, anchor="mm",
                                             stroke_width=stroke)
    fit = 0.7 * size / max(right - left, bottom - top, 1)  # the glyph's longer side: 70% of the frame
    face = ImageFont.truetype(str(font), size=max(8, int(size * fit)))
    draw.text((canvas / 2, canvas / 2), character, font=face, fill=0, anchor="mm",
              stroke_width=stroke, stroke_fill=0)
    angle, shear, scale, dx, dy = jitter
    cos, sin = math.cos(angle), math.sin(angle)
    # inverse affine map (output -> input pixel), about the centre of the canvas
    a, b = cos / scale, (sin + shear) / scale
    d, e = -sin / scale, cos / scale
    c0 = canvas / 2 - a * (canvas / 2 + dx) - b * (canvas / 2 + dy)
    f0 = canvas / 2 - d * (canvas / 2 + dx) - e * (canvas / 2 + dy)
    image = image.transform((canvas, canvas), Image.Transform.AFFINE, (a, b, c0, d, e, f0),
                            resample=Image.Resampling.BILINEAR, fillcolor=255)
    return image.crop((size, size, 2 * size, 2 * size))


def write_alphabet(root: str | Path, *, characters: str = CHARACTERS, drawers: int = 8,
                   size: int = 105, seed: int = 0) -> Path:
    """Write ``root/<character name>/<drawer>.png`` (``size`` px, black strokes on white)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for character in characters:
        fonts = fonts_for(character)
        if not fonts:
            raise ValueError(f"no shipped font draws {character!r}")
        name = unicodedata.name(character, f"U+{ord(character):04X}").lower().replace(" ", "_")
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(drawers):
            jitter = np.array([rng.normal(0, 0.12), rng.normal(0, 0.12), rng.uniform(0.85, 1.1),
                               rng.normal(0, size * 0.04), rng.normal(0, size * 0.04)])
            stroke = int(rng.integers(0, 3))
            _draw(character, fonts[k % len(fonts)], stroke, jitter, size).save(folder / f"{k}.png")
    return root
