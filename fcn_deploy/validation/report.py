"""The results of a validation: one :class:`CaseResult` per size, and the pooled :class:`ValidationReport`.

Both are built from the registered metrics (:mod:`.metrics`): a case holds each metric's
statistics, and the report pools them over every size, so the verdict is scored over every
validated pixel at once.  ``to_dict`` gives the JSON report (``passed``, ``cases`` with ``height``,
``width``, ``pixel_agreement`` and ``passed``, and every metric's fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import METRICS, Comparison, Stats
from .thresholds import Thresholds


@dataclass
class CaseResult:
    """One size: each metric's statistics, the failures of the per-size gates, the engine's arithmetic."""

    height: int
    width: int
    batch: int
    stats: dict[str, Stats] = field(repr=False)
    failures: list[str] = field(default_factory=list)
    #: The arithmetic the engine computed in (``Runner.arithmetic``: ``fp16-emulated``, ``bf16``, ...).
    arithmetic: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def values(self) -> dict[str, Any]:
        """Every metric's case fields (``pixel_agreement``, ``mean_iu``, ``pixels``, ...)."""
        out: dict[str, Any] = {}
        for key, metric in METRICS.items():
            if key in self.stats:
                out.update(metric.case_fields(self.stats[key]))
        return out

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("stats", "failures", "height", "width", "batch", "arithmetic"):
            raise AttributeError(name)
        values = self.values
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    @property
    def confusion(self) -> np.ndarray | None:
        """This size's reference-vs-engine confusion matrix (rows: reference classes)."""
        return self.stats.get("mean_iu", {}).get("confusion")

    def to_dict(self) -> dict[str, object]:
        return {"height": self.height, "width": self.width, "batch": self.batch, **self.values, "passed": self.passed,
                "failures": list(self.failures), "arithmetic": self.arithmetic}  # fmt: skip


def compare(reference, engine, num_classes: int, thresholds: Thresholds) -> CaseResult:
    """Score one size with every registered metric, and check the per-size gates."""
    from ..errors import FcnDeployError

    if engine.mask.shape != reference.mask.shape:
        raise FcnDeployError(f"engine mask has shape {engine.mask.shape}, the reference {reference.mask.shape}")
    comparison = Comparison(reference, engine, num_classes, thresholds)
    stats = {key: metric.measure(comparison) for key, metric in METRICS.items()}
    failures = [f for key, metric in METRICS.items() for f in metric.failures(stats[key], thresholds, "size")]
    n, h, w = reference.mask.shape
    return CaseResult(height=h, width=w, batch=n, stats=stats, failures=failures)


@dataclass
class ValidationReport:
    engine: str
    backend: str
    precision: str
    reference: str
    thresholds: Thresholds
    cases: list[CaseResult]
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    #: The arithmetic the engine computed in (see ``Runner.arithmetic``); may differ from ``precision``.
    arithmetic: str = ""
    #: What the INT8 build's own check recorded in the engine's manifest (the float nodes, the worst nodes), if any.
    int8_check: dict[str, Any] | None = None

    def pooled_stats(self, key: str) -> Stats:
        return METRICS[key].pool(c.stats[key] for c in self.cases if key in c.stats)

    def pooled(self, key: str) -> float | None:
        """A metric's value over every validated pixel (None with no cases)."""
        return METRICS[key].value(self.pooled_stats(key)) if self.cases else None

    @property
    def confusion(self) -> np.ndarray:
        """One confusion matrix over every image and size (reference rows, engine columns)."""
        total = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        for case in self.cases:
            if case.confusion is not None:
                total += case.confusion
        return total

    @property
    def pixel_agreement(self) -> float | None:
        return self.pooled("pixel_agreement")

    @property
    def confident_agreement(self) -> float | None:
        return self.summary().get("confident_agreement")

    @property
    def mean_iu(self) -> float | None:
        return self.pooled("mean_iu") if self.num_classes else None

    @property
    def near_edge_share(self) -> float | None:
        return self.summary().get("disagree_near_edge_share")

    @property
    def failures(self) -> list[str]:
        """Why the pooled verdict fails (the per-size reasons are on the cases)."""
        if not self.cases:
            return ["no sizes were validated"]
        return [f for key, metric in METRICS.items() for f in metric.failures(self.pooled_stats(key), self.thresholds, "pooled")]

    @property
    def passed(self) -> bool:
        return not self.failures and all(c.passed for c in self.cases)

    @property
    def failing_sizes(self) -> list[str]:
        return [f"{c.height}x{c.width}" for c in self.cases if not c.passed]

    def summary(self) -> dict[str, object]:
        summary: dict[str, object] = {"sizes": len(self.cases), "failed": len(self.failing_sizes)}
        for key, metric in METRICS.items():
            cases = [c.stats[key] for c in self.cases if key in c.stats]
            summary.update(metric.summary_fields(metric.pool(cases), cases) if cases else {})
        return summary

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "engine": self.engine,
            "backend": self.backend,
            "precision": self.precision,
            "arithmetic": self.arithmetic or self.precision,
            "reference": self.reference,
            "thresholds": self.thresholds.to_dict(),
            "metrics": {key: m.describe() for key, m in METRICS.items()},
            "summary": self.summary(),
            "failures": self.failures if not self.passed else [],
            "failing_sizes": self.failing_sizes,
            "class_names": list(self.class_names),
            "confusion": self.confusion.tolist() if self.cases else [],
            "cases": [c.to_dict() for c in self.cases],
            **({"int8_check": self.int8_check} if self.int8_check else {}),
        }
