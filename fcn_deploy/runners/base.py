"""The one small interface every backend offers (after Polygraphy's runners).

``load`` happens in the constructor; then ``inputs``/``outputs``/``profile`` describe the I/O,
``infer(batch)`` maps a preprocessed ``float32 Nx3xHxW`` batch to a :class:`Prediction`, and
``close()`` releases the session.  Validation, benchmarking and video inference only use this.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from ..errors import FcnDeployError
from ..meta import ModelMeta


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64, int32, ...
    shape: tuple[int | str, ...]  # ints for fixed dims, names for dynamic ones


@dataclass(frozen=True)
class Profile:
    """The input shapes an engine accepts: ``(batch, height, width)`` at min, opt and max."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def check(self, batch: int, height: int, width: int, what: str = "engine") -> None:
        shape = (batch, height, width)
        if any(s < lo for s, lo in zip(shape, self.min)) or any(s > hi for s, hi in zip(shape, self.max)):
            raise FcnDeployError(
                f"input {batch}x3x{height}x{width} is outside the {what}'s profile "
                f"(batch {self.min[0]}..{self.max[0]}, height {self.min[1]}..{self.max[1]}, "
                f"width {self.min[2]}..{self.max[2]}); resize the input or rebuild with a wider profile"
            )

    def contains(self, batch: int, height: int, width: int) -> bool:
        shape = (batch, height, width)
        return all(lo <= s <= hi for s, lo, hi in zip(shape, self.min, self.max))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict[str, list[int]]) -> Profile:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))  # type: ignore[arg-type]


@dataclass
class Prediction:
    """What a runner returns: the argmax mask always, the logits when the engine outputs them."""

    mask: np.ndarray  # int64 N x H x W
    logits: np.ndarray | None = None  # float32 N x C x H x W


def mask_from_logits(logits: np.ndarray) -> np.ndarray:
    """Argmax over the class axis of ``N x C x H x W`` logits (first maximum wins, as ``argmax``).

    A running maximum over the C class planes: contiguous passes instead of ``np.argmax``'s strided
    reduction over axis 1, twice as fast at 512x512 (4 vs 7.5 ms), and torch's CPU ``argmax(1)``
    takes 38 ms there.
    """
    best = logits[:, 0].copy()
    mask = np.zeros(best.shape, dtype=np.int64)
    for label in range(1, logits.shape[1]):
        better = logits[:, label] > best
        mask[better] = label
        np.maximum(best, logits[:, label], out=best)
    return mask


class Runner(abc.ABC):
    """A loaded model that segments preprocessed batches."""

    backend: str = "?"
    precision: str = "fp32"
    meta: ModelMeta
    profile: Profile
    path: str = ""

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def infer(self, batch: np.ndarray, need_logits: bool = True) -> Prediction:
        """Segment ``batch`` (float32 Nx3xHxW, preprocessed per ``meta``).

        With ``need_logits=False`` a runner may skip returning logits (the argmax then stays on
        the device that computed it): what video inference wants.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
