"""Images larger than the engine: overlapping tiles at the profile's opt size, logits blended, the mask
stitched at full resolution.

An FCN is fully convolutional, so a tile's logits equal the whole image's wherever the tile's cut
edges are out of the network's reach.  Three things make the stitched mask agree with a run on the
whole image:

* **Alignment.**  Tile origins sit on a :data:`ALIGN`-pixel grid (every architecture here has an output
  stride dividing 32), so a tile samples the image at the same phase as the whole-image run.  The last
  tile of a row or column starts on that grid too and runs to the image's edge, so it is between opt
  and opt + 31 pixels wide (within the profile's max), never padded; only where the profile has no room
  for that does it start at ``extent - opt`` instead.  Tiles at the image edge therefore lie inside it.
* **Overlap from the receptive field.**  :func:`estimate_context` measures how far a cut edge disturbs
  the logits (:attr:`Context.reach`), by running a probe at opt size whole and cut; the default overlap
  is twice that, so every pixel of an overlap is at least ``reach`` from the cut of one of its tiles.
* **Linear cross-fade.**  Each tile's logits are weighted by a ramp that rises from its cut edges over
  the overlap (image borders are real borders the whole-image run has too, so they are not ramped),
  and the weighted logits are summed.  Cropping each tile's centre instead would also keep pixels away
  from cuts, but switches tiles with a hard seam, where two slightly different logit maps meet and the
  argmax can jump along a line; the cross-fade keeps the logits continuous, and near a cut it trusts
  the tile that sees further.

Logits are accumulated one row of tiles at a time (a band ``C x tile x width``), so a 6000x4000 photo
costs a few hundred MB at most, not ``C x H x W`` floats.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..backends import Profile, Runner, mask_from_logits
from ..data.images import preprocess
from ..data.synthetic import make_scene
from ..errors import FcnDeployError

#: ``tile`` values: ``auto`` tiles images outside the profile's max, ``on`` any image larger than opt, ``off`` never.
TILE_MODES = ("auto", "on", "off")
#: Tile origins are multiples of this (the coarsest output stride of the architectures here).
ALIGN = 32
#: The probe scene's seed for :func:`estimate_context` (disjoint from training and calibration seeds).
PROBE_SEED = 19
#: The side :func:`estimate_context` probes at (within the profile's opt..max).
PROBE_SIDE = 512
#: A logit change below this fraction of the probe's logit spread counts as no change.
TOLERANCE = 0.01


@dataclass(frozen=True)
class Context:
    """How far a cut edge reaches into a tile's logits, measured on one probe at the engine's opt size."""

    #: Pixels from a cut edge within which some logit moved by more than ``tolerance`` x the logits' spread.
    reach: int
    #: The default overlap that follows: ``2 * reach``, at most what the tile size allows.
    overlap: int
    #: The largest distance from a cut the probe could measure (``reach`` may be this, or more, when equal).
    measured_up_to: int
    tolerance: float
    probe_hw: tuple[int, int]
    ms: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "probe_hw": list(self.probe_hw), "saturated": self.reach >= self.measured_up_to}


def runner_of(model: Any) -> Runner:
    """A :class:`Runner`, or the runner of a segmenter (anything with ``.runner``)."""
    return getattr(model, "runner", model)


def opt_hw(profile: Profile) -> tuple[int, int]:
    return int(profile.opt[1]), int(profile.opt[2])


def tile_hw_for(profile: Profile, overlap: int) -> tuple[int, int]:
    """The tile size: the profile's opt, grown towards its max where the overlap would take more than
    half of it (wasting over three quarters of every tile's pixels on context)."""
    sides = []
    for axis in (1, 2):
        side = int(profile.opt[axis])
        if 2 * overlap > side:
            side = max(side, min(int(profile.max[axis]), -(-2 * overlap // ALIGN) * ALIGN))
        sides.append(side)
    return sides[0], sides[1]


def can_tile(profile: Profile, height: int, width: int) -> bool:
    """Tiles need each side at least the profile's minimum (smaller images are resized up, as before)."""
    return height >= profile.min[1] and width >= profile.min[2]


def wants_tiles(mode: str, profile: Profile, height: int, width: int) -> bool:
    """Whether ``mode`` tiles a ``height x width`` image on an engine with ``profile``."""
    if mode == "off" or not can_tile(profile, height, width):
        return False
    if mode == "on":
        tile_h, tile_w = opt_hw(profile)
        return height > tile_h or width > tile_w
    return height > profile.max[1] or width > profile.max[2]


def axis_tiles(extent: int, tile: int, overlap: int, max_side: int) -> list[tuple[int, int]]:
    """``(start, size)`` of the tiles along one axis (see the module docstring).  Consecutive tiles
    overlap by at least ``overlap``; an extent that fits one tile is one tile."""
    if extent <= tile:
        return [(0, extent)]
    step = (tile - overlap) // ALIGN * ALIGN
    if step < ALIGN:
        raise FcnDeployError(
            f"tile overlap {overlap} px leaves no room to advance {tile}-pixel tiles on a {ALIGN}-pixel grid; "
            f"give an overlap of at most {tile - ALIGN} px, or build the engine with a larger opt size",
            options=("tile_overlap",),
        )
    last = (extent - tile) // ALIGN * ALIGN
    if extent - last > max_side:  # no room for the aligned last tile: the inward shift costs it its phase
        last = extent - tile
    starts = list(range(0, last, step)) + [last]
    return [(start, extent - start if start == last else tile) for start in starts]


def ramp(start: int, size: int, extent: int, overlap: int) -> np.ndarray:
    """A tile's weights along one axis: zero for the first ``(overlap - fade) / 2`` pixels from each cut
    edge (an edge inside the image), then rising linearly to one over ``fade = overlap / 4`` pixels;
    flat at the image's own borders.  Neighbours' fades meet in the middle of their overlap, where
    both tiles see at least 3/8 of the overlap of context."""
    fade = max(1, overlap // 4)
    dead = (overlap - fade) / 2
    distance = np.arange(size, dtype=np.float32) + 0.5
    weight = np.ones(size, dtype=np.float32)
    if start > 0:
        weight = np.minimum(weight, np.clip((distance - dead) / fade, 0, 1))
    if start + size < extent:
        weight = np.minimum(weight, np.clip((distance[::-1] - dead) / fade, 0, 1))
    return weight


def _logits(runner: Runner, tiles: list[np.ndarray]) -> np.ndarray:
    """Logits of same-shaped tiles, padded to the profile's minimum batch."""
    count = len(tiles)
    tiles = tiles + tiles[-1:] * (runner.profile.min[0] - count)
    logits = runner.infer(preprocess(np.stack(tiles), runner.meta.mean, runner.meta.std), need_logits=True).logits
    if logits is None:
        raise FcnDeployError(f"{runner.path}: the engine returns masks only; tiles blend logits, so run without tiles")
    return logits[:count]


def _run_row(runner: Runner, image: np.ndarray, y0: int, tile_h: int, xs: list[tuple[int, int]]) -> list[np.ndarray]:
    """Logits of one row of tiles, same-width tiles batched up to the profile's max batch."""
    out: list[np.ndarray | None] = [None] * len(xs)
    by_width: dict[int, list[int]] = {}
    for index, (_, width) in enumerate(xs):
        by_width.setdefault(width, []).append(index)
    for indices in by_width.values():
        for first in range(0, len(indices), runner.profile.max[0]):
            chunk = indices[first : first + runner.profile.max[0]]
            crops = [image[y0 : y0 + tile_h, xs[i][0] : xs[i][0] + xs[i][1]] for i in chunk]
            for i, logits in zip(chunk, _logits(runner, crops)):
                out[i] = logits
    return out  # type: ignore[return-value]


def segment_tiled(
    model: Any, image: np.ndarray, tile_hw: tuple[int, int] | None = None, overlap: int | None = None,
    mask_dtype: Any = np.uint8,
) -> np.ndarray:  # fmt: skip
    """``uint8 HxWx3`` RGB -> ``HxW`` class indices, in overlapping tiles (see the module docstring).

    ``model`` is an open :class:`Runner` or :class:`~.segmenter.Segmenter` (a Ray actor passes its own);
    ``tile_hw`` defaults to :func:`tile_hw_for` (the opt size, unless the overlap needs more), ``overlap`` to :func:`estimate_context`'s (measured
    once per runner).  A pure function of its arguments: no state besides that cached estimate.
    """
    runner = runner_of(model)
    profile = runner.profile
    height, width = image.shape[:2]
    if not can_tile(profile, height, width):
        raise FcnDeployError(f"a {height}x{width} image is smaller than the engine's minimum {profile.min[1]}x{profile.min[2]}")
    if overlap is None:
        overlap = context_of(runner).overlap
    if overlap < 0:
        raise FcnDeployError(f"tile overlap {overlap}: must be at least 0", options=("tile_overlap",))
    tile_h, tile_w = tile_hw or tile_hw_for(profile, overlap)
    ys = axis_tiles(height, tile_h, overlap, profile.max[1])
    xs = axis_tiles(width, tile_w, overlap, profile.max[2])
    ramp_y = min(tile_h - (ys[1][0] if len(ys) > 1 else 0), tile_h)
    ramp_x = min(tile_w - (xs[1][0] if len(xs) > 1 else 0), tile_w)
    mask = np.empty((height, width), dtype=mask_dtype)
    classes = runner.meta.num_classes
    band = np.zeros((classes, 0, width), dtype=np.float32)  # weighted logits of rows [top, top + band height)
    top = 0
    for y0, tile_h_row in ys:
        if y0 > top:  # rows above y0 get no more tiles: final
            mask[top:y0] = mask_from_logits(band[None, :, : y0 - top])[0]
            band, top = band[:, y0 - top :], y0
        grow = y0 + tile_h_row - (top + band.shape[1])
        if grow > 0:
            band = np.concatenate([band, np.zeros((classes, grow, width), dtype=np.float32)], axis=1)
        weight_y = ramp(y0, tile_h_row, height, ramp_y)[:, None]
        weights: dict[tuple[bool, int, bool], np.ndarray] = {}  # by (cut before, width, cut after): most tiles share one
        scratch: dict[tuple[bool, int, bool], np.ndarray] = {}
        for (x0, tile_w_col), logits in zip(xs, _run_row(runner, image, y0, tile_h_row, xs)):
            key = (x0 > 0, tile_w_col, x0 + tile_w_col < width)
            if key not in weights:
                weights[key] = weight_y * ramp(x0, tile_w_col, width, ramp_x)[None, :]
                scratch[key] = np.empty_like(logits)  # the runner's own arrays are left alone (a GPU runner may reuse them)
            band[:, y0 - top : y0 - top + tile_h_row, x0 : x0 + tile_w_col] += np.multiply(logits, weights[key], out=scratch[key])
    mask[top:] = mask_from_logits(band[None])[0]
    return mask


def probe_hw(profile: Profile) -> tuple[int, int]:
    """Where :func:`estimate_context` measures: :data:`PROBE_SIDE`, within the profile's opt..max."""
    return tuple(int(min(max(PROBE_SIDE, profile.opt[axis]), profile.max[axis])) for axis in (1, 2))  # type: ignore[return-value]


def probe_scene(height: int, width: int, cell: int = 128) -> np.ndarray:
    """A synthetic scene as a mosaic of ``cell``-sized scenes: one scene costs time in proportion to the
    square of its area (each object paints a full-size texture), a mosaic in proportion to its area."""
    rows, cols = -(-height // cell), -(-width // cell)
    cells = [[make_scene(PROBE_SEED, r * cols + c, cell, cell)[0] for c in range(cols)] for r in range(rows)]
    return np.concatenate([np.concatenate(row, axis=1) for row in cells], axis=0)[:height, :width]


def estimate_context(runner: Runner, tolerance: float = TOLERANCE) -> Context:
    """Measure how far a cut edge reaches into the logits, on a synthetic scene (:func:`probe_hw`).

    The scene runs whole, then as two crops (its top-left and bottom-right, about 3/4 of each side,
    origins on the tile grid), exactly what tiling does to it.  For each pixel of a crop, the largest
    logit change against the whole run is set against its distance from the nearest cut edge; the
    reach is one more than the farthest distance at which a change above ``tolerance`` x the logits'
    standard deviation remains.  Measuring the cut itself, rather than one perturbed pixel's spread,
    counts what the zero padding at a cut does, which is what the overlap must hide.  The probe is
    larger than a typical opt size because a network's context often is (ResNet-18's theoretical
    receptive field is 435 px).
    """
    start = time.perf_counter()
    profile = runner.profile
    height, width = probe_hw(profile)
    crop_h = max(profile.min[1], height * 3 // 4 // ALIGN * ALIGN)
    crop_w = max(profile.min[2], width * 3 // 4 // ALIGN * ALIGN)
    if crop_h >= height or crop_w >= width:
        raise FcnDeployError(
            f"{runner.path}: the profile ({height}x{width} at most) is too small to measure the receptive field; give a tile overlap",
            options=("tile_overlap",),
        )
    probe = probe_scene(height, width)
    whole = _logits(runner, [probe])[0]
    scale = float(whole.std()) or 1.0
    reach, measured = 0, 0
    corners = [(0, 0), ((height - crop_h) // ALIGN * ALIGN, (width - crop_w) // ALIGN * ALIGN)]
    for y0, x0 in corners:
        crop = _logits(runner, [probe[y0 : y0 + crop_h, x0 : x0 + crop_w]])[0]
        change = np.abs(crop - whole[:, y0 : y0 + crop_h, x0 : x0 + crop_w]).max(axis=0)
        distance = np.minimum(_cut_distance(y0, crop_h, height)[:, None], _cut_distance(x0, crop_w, width)[None, :])
        measured = max(measured, int(distance[np.isfinite(distance)].max()))
        moved = distance[change > tolerance * scale]
        if moved.size:
            reach = max(reach, int(moved.max()) + 1)
    reach = min(reach, measured)
    overlap = min(2 * reach, max(profile.max[1], profile.max[2]) - ALIGN)
    return Context(reach, overlap, measured, tolerance, (height, width), (time.perf_counter() - start) * 1000)


def _cut_distance(start: int, size: int, extent: int) -> np.ndarray:
    """Each pixel's distance (0 at the edge pixel) to the nearest cut edge of a crop ``[start, start + size)``
    along one axis; infinite where neither end is a cut."""
    index = np.arange(size, dtype=np.float64)
    distance = np.full(size, np.inf)
    if start > 0:
        distance = np.minimum(distance, index)
    if start + size < extent:
        distance = np.minimum(distance, size - 1 - index)
    return distance


_CONTEXTS: weakref.WeakKeyDictionary[Runner, Context] = weakref.WeakKeyDictionary()


def context_of(runner: Runner) -> Context:
    """:func:`estimate_context` of ``runner``, measured on first use and remembered while it is open."""
    if runner not in _CONTEXTS:
        _CONTEXTS[runner] = estimate_context(runner)
    return _CONTEXTS[runner]


class Tiler:
    """A segmenter's tiling policy: which images to tile (``mode``), with which overlap (given, or
    estimated once), and what it did, for the infer report."""

    def __init__(self, runner: Runner, mode: str = "auto", overlap: int | None = None):
        if mode not in TILE_MODES:
            raise FcnDeployError(f"tile {mode!r}: choose one of {', '.join(TILE_MODES)}", options=("tile",))
        if overlap is not None and overlap < 0:
            raise FcnDeployError(f"tile overlap {overlap}: must be at least 0", options=("tile_overlap",))
        self.runner, self.mode, self.given_overlap = runner, mode, overlap
        self.tiled_frames = 0
        self.tiles = 0

    def wants(self, height: int, width: int) -> bool:
        return wants_tiles(self.mode, self.runner.profile, height, width)

    @property
    def overlap(self) -> int:
        return self.given_overlap if self.given_overlap is not None else context_of(self.runner).overlap

    def segment(self, image: np.ndarray, mask_dtype: Any = np.uint8) -> np.ndarray:
        mask = segment_tiled(self.runner, image, overlap=self.overlap, mask_dtype=mask_dtype)
        height, width = image.shape[:2]
        profile = self.runner.profile
        tile_h, tile_w = tile_hw_for(profile, self.overlap)
        self.tiled_frames += 1
        rows, cols = axis_tiles(height, tile_h, self.overlap, profile.max[1]), axis_tiles(width, tile_w, self.overlap, profile.max[2])
        self.tiles += len(rows) * len(cols)
        return mask

    def summary(self) -> dict[str, Any]:
        """What the infer report says about tiles: the mode, what was tiled, and the overlap and where it came from."""
        out: dict[str, Any] = {"mode": self.mode, "tiled_frames": self.tiled_frames, "tiles": self.tiles}
        if self.tiled_frames or self.given_overlap is not None:
            out.update(tile_hw=list(tile_hw_for(self.runner.profile, self.overlap)), overlap=self.overlap,
                       overlap_from="given" if self.given_overlap is not None else "estimate")  # fmt: skip
        if self.runner in _CONTEXTS:
            out["context"] = _CONTEXTS[self.runner].to_dict()
        return out
