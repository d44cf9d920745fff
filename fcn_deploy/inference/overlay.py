"""Drawing a mask onto its picture: the class colours blended in, and a legend of class names."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..meta import ModelMeta


def blend_mask(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float) -> np.ndarray:
    """Blend each pixel's class colour into ``image``; class 0 (background) keeps the image's colours.

    Done with Pillow's C blend/composite: this runs once per video frame, and numpy float blending
    of a full frame cost more than the engine's own pre-processing.
    """
    labels = Image.fromarray(mask.astype(np.uint8, copy=False))
    colours = labels.copy()
    flat = [int(v) for colour in list(palette)[:256] for v in colour]
    colours.putpalette(flat + [0] * (768 - len(flat)))
    base = Image.fromarray(image)
    blended = Image.blend(base, colours.convert("RGB"), alpha)
    foreground = labels.point(lambda label: 255 if label else 0)
    return np.array(Image.composite(blended, base, foreground))  # writable: the legend is drawn into it


@functools.lru_cache(maxsize=8)
def legend_patch(class_names: tuple[str, ...], palette: tuple[tuple[int, ...], ...], height: int, width: int) -> np.ndarray:
    """An RGBA legend (swatch + name per class) scaled to the frame, in columns when it is tall,
    cropped to ``height x width``."""
    font_size = max(8, min(24, height // 24))
    font = ImageFont.load_default(size=font_size)
    pad = max(2, font_size // 4)
    row_height = font_size + pad
    rows = max(1, min(len(class_names), (height - pad) // row_height))
    columns = math.ceil(len(class_names) / rows)
    column_width = font_size + 2 * pad + math.ceil(max(font.getlength(name) for name in class_names))
    patch = Image.new("RGBA", (columns * column_width + pad, rows * row_height + pad), (0, 0, 0, 160))
    draw = ImageDraw.Draw(patch)
    for index, (name, colour) in enumerate(zip(class_names, palette)):
        column, row = divmod(index, rows)
        x, y = pad + column * column_width, pad + row * row_height
        draw.rectangle([x, y, x + font_size - 1, y + font_size - 1], fill=(*colour, 255), outline=(255, 255, 255, 255))
        draw.text((x + font_size + pad, y + font_size / 2), name, fill=(255, 255, 255, 255), font=font, anchor="lm")
    return np.asarray(patch)[:height, :width]


def render_overlay(image: np.ndarray, mask: np.ndarray, meta: ModelMeta, alpha: float) -> np.ndarray:
    """The output picture: the mask blended into ``image``, with the legend in the top-left corner."""
    picture = blend_mask(image, mask, meta.palette, alpha)
    names = tuple(meta.class_names)
    palette = tuple(tuple(colour) for colour in meta.palette[: len(names)])
    legend = legend_patch(names, palette, *picture.shape[:2])
    region = picture[: legend.shape[0], : legend.shape[1]]
    opacity = legend[..., 3:] / 255.0
    region[...] = (legend[..., :3] * opacity + region * (1 - opacity) + 0.5).astype(np.uint8)
    return picture
