"""Pass criteria of a validation: named limits, read by the gates of the registered metrics.

A :class:`Thresholds` maps limit names (``pixel_agreement``, ``size_floor``, ``min_mean_iu``, ...:
whatever a registered metric's gate reads, see :func:`~.metrics.limit_names`) to values; a limit
that is absent or None is not checked.  The product defaults come from the precision registry
(:mod:`fcn_deploy.precisions`); every limit can be overridden.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .. import precisions
from ..errors import FcnDeployError
from . import metrics


class Thresholds(Mapping[str, Any]):
    """Immutable named limits; ``thresholds.size_floor`` reads one (None when it is off)."""

    __slots__ = ("_limits",)

    def __init__(self, **limits: float | None):
        known = metrics.limit_names()
        unknown = sorted(set(limits) - set(known))
        if unknown:
            raise FcnDeployError(
                f"unknown threshold {', '.join(unknown)}; the registered metrics read {', '.join(sorted(known))}", options=("thresholds",)
            )
        values = {**metrics.parameter_defaults(), **limits}
        fractions = metrics.fraction_limits()
        for name, value in values.items():
            if value is not None and name in fractions and not 0.0 <= float(value) <= 1.0:
                raise FcnDeployError(f"threshold {name} = {value}: must be between 0 and 1", options=(name,))
        object.__setattr__(self, "_limits", values)

    def __getitem__(self, name: str) -> Any:
        return self._limits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._limits)

    def __len__(self) -> int:
        return len(self._limits)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._limits:
            return self._limits[name]
        if name in metrics.limit_names():
            return None
        raise AttributeError(f"no threshold {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Thresholds are immutable; use replace()")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thresholds) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))

    def __repr__(self) -> str:
        return f"Thresholds({', '.join(f'{k}={v}' for k, v in self._limits.items())})"

    def replace(self, **overrides: float | None) -> Thresholds:
        """A copy with ``overrides`` applied (None values are ignored: they do not turn a gate off)."""
        return Thresholds(**{**self._limits, **{k: v for k, v in overrides.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        """Every limit the registered metrics read (None where off), for reports."""
        return {name: self._limits.get(name) for name in metrics.limit_names()}


def default_thresholds(precision: str) -> Thresholds:
    """The product thresholds of ``precision`` (from its registry entry)."""
    return Thresholds(**precisions.get(precision).limits)


class _Defaults(Mapping[str, Thresholds]):
    """``DEFAULT_THRESHOLDS[precision]``: the registry's limits, read when asked (a precision
    registered later is there too)."""

    def __getitem__(self, precision: str) -> Thresholds:
        return default_thresholds(precision)

    def __iter__(self) -> Iterator[str]:
        return iter(precisions.names())

    def __len__(self) -> int:
        return len(precisions.names())


DEFAULT_THRESHOLDS: Mapping[str, Thresholds] = _Defaults()

#: What export checks ONNX Runtime against PyTorch with (FP32, plus a logit tolerance).
EXPORT_LIMITS = {"pixel_agreement": 0.9999, "size_floor": 0.999, "confident_agreement": 1.0, "confidence_margin": 0.05,
                 "max_rel_logit_diff": 1e-3}  # fmt: skip


def export_thresholds() -> Thresholds:
    return Thresholds(**EXPORT_LIMITS)


def thresholds_for(precision: str, **overrides: float | None) -> Thresholds:
    """The defaults of ``precision`` with ``overrides`` (limit names, None = keep the default) applied."""
    return default_thresholds(precision).replace(**overrides)
