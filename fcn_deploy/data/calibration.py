"""Calibration sets: the images that INT8 ranges and FP16 overflow checks are measured on.

Images are preprocessed exactly as at inference; what identifies the set (names and bytes) is
hashed, so caches keyed by it never go stale.  The default set is generated: synthetic scenes from a
seed that training and validation never see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FcnDeployError
from ..fileio import atomic_path, ensure_writable_dir
from ..meta import ModelMeta
from . import SYNTHETIC_SEEDS
from .images import list_images, load_rgb, preprocess, resize_rgb
from .synthetic import make_scene

#: Below this many readable images, calibration is refused (ranges from a handful are noise).
MIN_CALIB_IMAGES = 8
DEFAULT_CALIB_COUNT = 32
DEFAULT_CALIB_DIR = Path("calibration")
#: The synthetic seed of calibration scenes (disjoint from training, validation and test).
CALIBRATION_SEED = SYNTHETIC_SEEDS["calib"]


@dataclass
class CalibrationSet:
    """Preprocessed calibration batches plus what identifies them (for the cache key and manifest)."""

    folder: Path
    files: list[Path]
    batches: list[np.ndarray]  # each float32 1x3xHxW, preprocessed exactly like inference
    skipped: list[str] = field(default_factory=list)
    sha256: str = ""

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return sorted({tuple(b.shape) for b in self.batches})


def generate_default_calibration(folder: Path, count: int = DEFAULT_CALIB_COUNT, size: int = 256) -> int:
    """Fill ``folder`` with ``count`` synthetic scenes (held-out seed) as PNG files."""
    from PIL import Image

    ensure_writable_dir(folder)
    for index in range(count):
        image, _ = make_scene(CALIBRATION_SEED, index, size, size)
        with atomic_path(folder / f"synthetic_{index:04d}.png") as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
    return count


def load_calibration(
    folder: str | Path, meta: ModelMeta, max_hw: tuple[int, int] | None = None, min_count: int = MIN_CALIB_IMAGES
) -> CalibrationSet:
    """Read every image in ``folder`` and preprocess it as inference does.

    Files that are not images (or cannot be decoded) are skipped and counted; fewer than
    ``min_count`` usable images is an error.  Images larger than ``max_hw`` (the profile's max
    height and width) are scaled down to fit, keeping their aspect, as ``infer`` would.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FcnDeployError(f"calibration folder not found: {folder} (run `fcn-deploy calib-data {folder}`)")
    files, batches = [], []
    images = set(list_images(folder))
    skipped = [p.name for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
               and p not in images and p.name.lower() != "readme.md"]  # fmt: skip
    digest = hashlib.sha256()
    for path in sorted(images):
        try:
            image = load_rgb(path, convert=True)
        except FcnDeployError:
            skipped.append(path.name)
            continue
        if max_hw and (image.shape[0] > max_hw[0] or image.shape[1] > max_hw[1]):
            scale = min(max_hw[0] / image.shape[0], max_hw[1] / image.shape[1])
            image = resize_rgb(image, max(1, int(image.shape[0] * scale)), max(1, int(image.shape[1] * scale)))
        if min(image.shape[:2]) < meta.min_size:
            skipped.append(path.name)
            continue
        files.append(path)
        batches.append(preprocess(image, meta.mean, meta.std))
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    if len(batches) < min_count:
        raise FcnDeployError(
            f"calibration folder {folder} has {len(batches)} usable image(s) (skipped {len(skipped)} other files); "
            f"need at least {min_count} images like the real data (see calibration/README.md)"
        )
    return CalibrationSet(folder, files, batches, skipped, digest.hexdigest())
