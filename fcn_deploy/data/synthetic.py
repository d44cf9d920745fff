"""Procedural segmentation scenes: the embedded default dataset.

No real dataset can be downloaded on the machines this project targets, so the default model is
trained on scenes drawn here.  A scene has a textured background with clutter (strokes, speckle,
a lighting gradient) and a few shapes of four classes, each with its own colour, texture, size,
aspect ratio and rotation, painted in order so later shapes occlude earlier ones.

Object sizes are in pixels, not fractions of the image, and the number of objects grows with the
area, so a model trained on small crops sees the same statistics on a large frame.

Colour is a weak cue, as in real data: each class draws its hue from a band around its own centre,
and the bands overlap, so shape decides the hard cases.  Backgrounds are less saturated than
objects but carry their own texture and clutter.

Every scene is a pure function of ``(seed, index, height, width)``.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ["background", "ellipse", "rectangle", "triangle", "cross"]
#: Distinct, readable overlay colours (background black, as in VOC).
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200]]

_MIN_SIDE, _MAX_SIDE = 18, 72  # object bounding size in pixels
_AREA_PER_OBJECT = 72 * 72


def _rng(seed: int, index: int, height: int, width: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, height, width])


_CLASS_HUE = {1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75}
_HUE_SPREAD = 0.05


def _random_colour(rng: np.random.Generator, hue: float | None = None, saturation=(0.25, 1.0)) -> np.ndarray:
    h = rng.random() if hue is None else (hue + rng.normal(0, _HUE_SPREAD)) % 1.0
    s, v = rng.uniform(*saturation), rng.uniform(0.35, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255


def _texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray) -> np.ndarray:
    """A (H, W, 3) float texture around colour ``base``: flat, stripes, checks, or noise."""
    kind = rng.integers(4)
    tex = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    if kind == 0:
        return tex
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 1:  # stripes at a random angle and period
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 14)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period))
        other = base * rng.uniform(0.5, 0.85)
        mix = (wave > 0).astype(np.float32)[..., None]
        return tex * mix + other * (1 - mix)
    if kind == 2:  # checks
        cell = int(rng.integers(4, 12))
        mix = (((yy // cell) + (xx // cell)) % 2)[..., None]
        return tex * (0.65 + 0.35 * mix)
    noise = rng.normal(0, rng.uniform(10, 35), (height, width, 1)).astype(np.float32)
    return tex + noise


def _shape_polygon(rng: np.random.Generator, cls: int, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    aspect = rng.uniform(0.5, 2.0)
    half_w, half_h = size / 2 * math.sqrt(aspect), size / 2 / math.sqrt(aspect)
    if cls == 1:  # ellipse
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([half_w * np.cos(t), half_h * np.sin(t)], 1)
    elif cls == 2:  # rectangle
        pts = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    elif cls == 3:  # triangle (random apex offset: not always isosceles)
        apex = rng.uniform(-0.6, 0.6) * half_w
        pts = np.array([[apex, -half_h], [half_w, half_h], [-half_w, half_h]])
    else:  # cross: arm thickness 30-45 % of the size
        a, b = half_w, half_h
        t = rng.uniform(0.3, 0.45) * min(a, b) * 2 / 2
        pts = np.array([[-t, -b], [t, -b], [t, -t], [a, -t], [a, t], [t, t], [t, b], [-t, b], [-t, t], [-a, t], [-a, -t], [-t, -t]])
    theta = rng.uniform(0, math.pi)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    pts = pts @ rot.T + [cx, cy]
    return [tuple(p) for p in pts]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = _random_colour(rng, saturation=(0.0, 0.4)) * rng.uniform(0.5, 1.0)
    img = _texture(rng, height, width, base)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(height, width)
    img = img * (1 + rng.uniform(-0.35, 0.35) * ramp)[..., None]
    return img


def _clutter(rng: np.random.Generator, canvas: Image.Image, height: int, width: int) -> None:
    """Background clutter: strokes and arcs that are not objects."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6) * max(1, height * width / (128 * 128)) ** 0.5)):
        colour = tuple(int(c) for c in _random_colour(rng))
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        length, angle = rng.uniform(10, 60), rng.uniform(0, 2 * math.pi)
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(6, 24)
            start = rng.uniform(0, 360)
            draw.arc([x0 - r, y0 - r, x0 + r, y0 + r], start, start + rng.uniform(40, 200), fill=colour, width=2)


def make_scene(seed: int, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image uint8 HxWx3, label uint8 HxW)`` for scene ``index`` of dataset ``seed``."""
    rng = _rng(seed, index, height, width)
    image = np.clip(_background(rng, height, width), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(image)
    _clutter(rng, canvas, height, width)
    image = np.asarray(canvas, dtype=np.float32).copy()
    label = np.zeros((height, width), dtype=np.uint8)
    bg_mean = image.reshape(-1, 3).mean(0)
    count = max(1, int(rng.poisson(max(1.0, height * width / _AREA_PER_OBJECT))))
    for _ in range(count):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        size = rng.uniform(_MIN_SIDE, _MAX_SIDE)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        mask_img = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask_img).polygon(_shape_polygon(rng, cls, cx, cy, size), fill=255)
        mask = np.asarray(mask_img) > 127
        if not mask.any():
            continue
        colour = _random_colour(rng, _CLASS_HUE[cls], saturation=(0.45, 1.0))
        for _ in range(8):  # keep the object visible against the background
            if np.abs(colour - bg_mean).sum() > 120:
                break
            colour = _random_colour(rng, _CLASS_HUE[cls], saturation=(0.45, 1.0))
        image[mask] = _texture(rng, height, width, colour)[mask]
        label[mask] = cls
    image += rng.normal(0, rng.uniform(0, 6), image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticScenes:
    """A deterministic, map-style dataset of :func:`make_scene` samples (``len`` = ``length``)."""

    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, length: int, size: int | tuple[int, int] = 128, seed: int = 0):
        self.length = length
        self.height, self.width = (size, size) if isinstance(size, int) else size
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return make_scene(self.seed, index, self.height, self.width)


def panning_frames(seed: int, count: int, height: int, width: int, speed: int = 4):
    """Frames of a camera panning across one wide scene: a video the default model can segment.

    Yields ``(frame uint8 HxWx3, label uint8 HxW)``; the scene is wide enough for ``count`` frames.
    """
    scene, label = make_scene(seed, 0, height, width + speed * max(0, count - 1))
    for t in range(count):
        left = t * speed
        yield scene[:, left : left + width], label[:, left : left + width]
