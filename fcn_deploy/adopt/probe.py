"""Running a model in ONNX Runtime on synthetic scenes: how ``adopt`` and ``inspect`` learn what a
graph really outputs (declared output shapes are often missing or stale in foreign exports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.images import preprocess
from ..data.synthetic import make_scene
from ..onnxkit import create_session

#: Seed of the synthetic scenes adopt and inspect probe models with (disjoint from the others).
PROBE_SEED = 5
#: The size a model with dynamic height and width is first run at: odd, so that stride mistakes show.
FIRST_PROBE_HW = (97, 129)


class Probe:
    """An ONNX Runtime CPU session over a model (serialized bytes or a path), fed synthetic scenes
    normalised with ``mean`` and ``std``.  A model ONNX Runtime refuses is a one-line error naming ``where``."""

    def __init__(self, model: bytes | str | Path, where: str | Path, mean, std):
        # Failures come back as exceptions, said once in our words: ORT's own log stays quiet.
        self.session = create_session(model, where=where, log_severity=4)
        self.input = self.session.get_inputs()[0].name
        self.mean, self.std = mean, std

    def batch(self, n: int, height: int, width: int) -> np.ndarray:
        images = np.stack([make_scene(PROBE_SEED, i, height, width)[0] for i in range(n)])
        return preprocess(images, self.mean, self.std)

    def run(self, n: int, height: int, width: int, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name; ONNX Runtime's exceptions reach the caller (``onnxkit.ort_message`` says them in one line)."""
        names = outputs or [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.input: self.batch(n, height, width)})))


def first_probe_size(dims) -> tuple[int, int, int]:
    """``(n, h, w)`` a model is first run at: its fixed dims, else batch 1 at :data:`FIRST_PROBE_HW`."""
    n = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1
    h = dims[2] if isinstance(dims[2], int) and dims[2] > 0 else FIRST_PROBE_HW[0]
    w = dims[3] if isinstance(dims[3], int) and dims[3] > 0 else FIRST_PROBE_HW[1]
    return n, h, w
