"""Image-like validation inputs: synthetic scenes, or real images fitted to each size.

Never noise: random weights on noise give near-tied logits, and agreement on those measures nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import SYNTHETIC_SEEDS
from ..data.images import fit_to_size, list_images, load_rgb
from ..data.synthetic import make_scene
from ..errors import FcnDeployError

#: Seed of the scenes used for validation (disjoint from training, validation and calibration).
VALIDATION_SEED = SYNTHETIC_SEEDS["test"]


class InputSource:
    """Image-like uint8 inputs of any size: synthetic scenes, or real images fitted to the size."""

    def __init__(self, images_dir: str | Path | None = None, seed: int = VALIDATION_SEED):
        self.seed = seed
        self.images: list[np.ndarray] = []
        if images_dir is not None:
            files = list_images(images_dir) if Path(images_dir).is_dir() else []
            if not files:
                raise FcnDeployError(f"{images_dir}: no images found (jpg/png/...)", options=("images",))
            self.images = [load_rgb(f, convert=True) for f in files]

    def batch(self, height: int, width: int, batch: int, index: int) -> np.ndarray:
        if self.images:
            picks = [self.images[(index * batch + i) % len(self.images)] for i in range(batch)]
            return np.stack([fit_to_size(img, height, width) for img in picks])
        return np.stack([make_scene(self.seed, index * batch + i, height, width)[0] for i in range(batch)])
