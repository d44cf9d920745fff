"""Training samples: random crop and flip, preprocessed exactly as at inference.

Kept apart from the package's other modules because it needs torch: reading images, scenes and
calibration sets (what engines and benchmarks do) should not import it.
"""

from __future__ import annotations

import numpy as np
import torch

from .images import preprocess
from .voc import VOID


class TrainingView(torch.utils.data.Dataset):
    """Training samples: random crop (padded with void where the image is smaller) and flip,
    preprocessed exactly as at inference."""

    def __init__(self, dataset, crop: int, mean, std, seed: int = 0, augment: bool = True):
        self.dataset, self.crop, self.mean, self.std = dataset, crop, mean, std
        self.seed, self.augment = seed, augment
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        h, w = label.shape
        c = self.crop
        if (h, w) != (c, c):
            ph, pw = max(0, c - h), max(0, c - w)
            if ph or pw:
                image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
                label = np.pad(label, ((0, ph), (0, pw)), constant_values=VOID)
            top = int(rng.integers(0, image.shape[0] - c + 1)) if self.augment else 0
            left = int(rng.integers(0, image.shape[1] - c + 1)) if self.augment else 0
            image, label = image[top : top + c, left : left + c], label[top : top + c, left : left + c]
        if self.augment and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        x = torch.from_numpy(preprocess(np.ascontiguousarray(image), self.mean, self.std)[0])
        return x, torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
