"""The input shapes an engine accepts (its :class:`Profile`), and the one default profile every
backend builds when no ``--batch`` or size range is given."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FcnDeployError
from ..meta import ModelMeta

#: The largest batch of the default profile (engines built without ``--batch``).
DEFAULT_MAX_BATCH = 8


@dataclass(frozen=True)
class Profile:
    """The input shapes an engine accepts: ``(batch, height, width)`` at min, opt and max."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def check(self, batch: int, height: int, width: int, what: str = "engine") -> None:
        if not self.contains(batch, height, width):
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


#: The upper bounds of a model that is not a compiled engine (a checkpoint, a plain ONNX file):
#: only the architecture's minimum limits what it accepts.
UNBOUNDED_MAX = (1024, 1 << 16, 1 << 16)


def default_profile(meta: ModelMeta, input_dims: list[int | str] | None = None, bounded: bool = True) -> Profile:
    """The one default profile: batch 1..1..8, sides from the architecture's minimum over its
    training size (opt) to the recommended maximum (``bounded=False``: no maximum, for models that
    are not compiled engines).  Fixed dims of an ONNX input (``N, C, H, W`` as ints; names or 0
    when dynamic) pin their axes: a static graph gives a static profile."""
    lo = [1, meta.min_size, meta.min_size]
    opt = [1, meta.train_size, meta.train_size]
    hi = [DEFAULT_MAX_BATCH, meta.max_size, meta.max_size] if bounded else list(UNBOUNDED_MAX)
    if input_dims is not None:
        for axis, dim in zip((0, 1, 2), (input_dims[0], input_dims[2], input_dims[3])):
            if isinstance(dim, int) and dim > 0:
                lo[axis] = opt[axis] = hi[axis] = dim
    return Profile(tuple(lo), tuple(opt), tuple(hi))  # type: ignore[arg-type]
