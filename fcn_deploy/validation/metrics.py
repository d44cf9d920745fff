"""Validation metrics as objects: each computes per size, pools over every size, may gate, and has a label.

A :class:`Metric` turns one size's comparison (:class:`Comparison`: the reference's and the engine's
predictions) into *statistics* that add up over sizes (pixel counts, a confusion matrix, a maximum),
and statistics into values.  Pooling is therefore exact: the pooled agreement is agreeing pixels
over all pixels, and the pooled mean IU comes from one confusion matrix over every image and size,
as the paper's scorer does.  A metric's :class:`Gate` names a limit (a key of
:class:`~fcn_deploy.validation.thresholds.Thresholds`) and whether it applies per size or pooled.

The console table, the JSON report and the HTML page iterate over :data:`METRICS`, so adding a
metric is one :func:`register` call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..metrics import fast_hist, scores_from_hist

#: A disagreeing pixel this close (Chebyshev distance, px) to a pixel of another reference class is "on an edge".
EDGE_RADIUS_PX = 2

Stats = dict[str, Any]


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit per pixel (``N x H x W``)."""
    if logits.shape[1] < 2:
        return np.full((logits.shape[0], *logits.shape[2:]), np.inf, dtype=np.float32)
    part = np.partition(logits, -2, axis=1)
    return part[:, -1] - part[:, -2]


def near_edge(reference_mask: np.ndarray, where: tuple[np.ndarray, ...], radius: int = EDGE_RADIUS_PX) -> np.ndarray:
    """For the pixels at ``where`` (indices into ``N x H x W``), whether a pixel of another reference
    class lies within ``radius`` px.  Looks only at those pixels: disagreements are few."""
    n, ys, xs = where
    if not len(ys):
        return np.zeros(0, dtype=bool)
    padded = np.pad(reference_mask, ((0, 0), (radius, radius), (radius, radius)), mode="edge")  # image borders are no edge
    own = reference_mask[where]
    hit = np.zeros(len(ys), dtype=bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy or dx:
                hit |= padded[n, ys + radius + dy, xs + radius + dx] != own
    return hit


class Comparison:
    """One size: the reference's and the engine's predictions, with what several metrics read
    computed once.  ``parameters`` holds the thresholds' non-gate parameters (the confidence margin)."""

    def __init__(self, reference, engine, num_classes: int, parameters: Mapping[str, Any]):
        if reference.logits is None:
            raise ValueError("the reference must output logits")
        self.reference, self.engine = reference, engine
        self.num_classes = num_classes
        self.parameters = parameters

    @functools.cached_property
    def agree(self) -> np.ndarray:
        return self.reference.mask == self.engine.mask

    @functools.cached_property
    def margin(self) -> np.ndarray:
        return top2_margin(self.reference.logits)


@dataclass(frozen=True)
class Gate:
    """A pass criterion: the value must be ``at_least`` (or at most) the limit named ``limit``."""

    limit: str
    scope: Literal["size", "pooled"]
    at_least: bool = True
    #: The failure sentence: ``{value}``, ``{limit}`` and the parameters are filled in.
    message: str = "{value} below {limit}"
    #: The limit is a fraction (0..1).
    fraction: bool = True


class Metric:
    """One figure of a validation: subclasses set the class attributes and implement ``measure``/``value``."""

    #: The key of its value in each case's and in the summary's JSON.
    key: str
    #: Column header on the console and the HTML page.
    label: str
    description: str = ""
    gates: tuple[Gate, ...] = ()
    #: Non-gate parameters it reads from the thresholds, with their defaults.
    parameters: Mapping[str, float] = {}
    #: Shown as a column of the per-size tables.
    column: bool = True
    #: Shown as a percentage (value 0..1).
    percent: bool = False
    digits: int = 4

    def measure(self, comparison: Comparison) -> Stats:
        """This size's statistics (what pools: counts, matrices, maxima)."""
        raise NotImplementedError

    def pool(self, stats: Iterable[Stats]) -> Stats:
        """Statistics over several sizes: sums, and maxima for keys starting with ``max``."""
        pooled: Stats = {}
        for item in stats:
            for name, value in item.items():
                if value is None:
                    pooled.setdefault(name, None)
                elif pooled.get(name) is None:
                    pooled[name] = value.copy() if isinstance(value, np.ndarray) else value
                elif name.startswith("max"):
                    pooled[name] = max(pooled[name], value)
                else:
                    pooled[name] = pooled[name] + value
        return pooled

    def value(self, stats: Stats) -> float | None:
        raise NotImplementedError

    def case_fields(self, stats: Stats) -> dict[str, Any]:
        """What a case's JSON carries for this metric (its value; subclasses add counts)."""
        return {self.key: self.value(stats)}

    def summary_fields(self, pooled: Stats, cases: list[Stats]) -> dict[str, Any]:
        """What the pooled summary carries for this metric."""
        return {self.key: self.value(pooled)}

    def limit_for(self, gate: Gate, limit: float, stats: Stats) -> float:
        """The limit a gate compares with (a metric may scale it, e.g. by the logits' magnitude)."""
        return limit

    def failures(self, stats: Stats, limits: Mapping[str, Any], scope: str) -> list[str]:
        """The failure sentences of this metric's gates of ``scope`` (``"size"`` or ``"pooled"``)."""
        value, found = self.value(stats), []
        for gate in self.gates:
            if gate.scope != scope or limits.get(gate.limit) is None or value is None:
                continue
            limit = self.limit_for(gate, float(limits[gate.limit]), stats)
            if (value < limit) if gate.at_least else (value > limit):
                found.append(gate.message.format(value=value, limit=limit, **{**self.parameters, **limits, **stats_text(stats)}))
        return found

    def format(self, value: float | None) -> str:
        return format_value(value, percent=self.percent, digits=self.digits)

    def describe(self) -> dict[str, Any]:
        """What a report records about this metric, so that a page drawn from it later needs no registry."""
        return {"label": self.label, "description": self.description, "percent": self.percent, "column": self.column,
                "digits": self.digits}  # fmt: skip


def format_value(value: float | None, *, percent: bool, digits: int) -> str:
    """A metric's value as its columns show it (``-`` for none)."""
    if value is None:
        return "-"
    return f"{value * 100:.{digits}f}%" if percent else f"{value:.{digits}g}"


def stats_text(stats: Stats) -> dict[str, Any]:
    """Scalar statistics, for failure messages."""
    return {name: value for name, value in stats.items() if isinstance(value, (int, float))}


class PixelAgreement(Metric):
    key, label = "pixel_agreement", "agreement"
    description = "share of pixels whose argmax class equals the reference's"
    gates = (
        Gate("size_floor", "size", message="pixel agreement {value:.5f} < the per-size floor {limit}"),
        Gate("pixel_agreement", "pooled", message="pixel agreement over all sizes {value:.5f} < {limit}"),
    )
    percent = True

    def measure(self, c: Comparison) -> Stats:
        return {"pixels": int(c.agree.size), "agreeing": int(c.agree.sum())}

    def value(self, stats: Stats) -> float | None:
        return stats["agreeing"] / stats["pixels"] if stats.get("pixels") else None

    def case_fields(self, stats: Stats) -> dict[str, Any]:
        return {self.key: self.value(stats), "pixels": stats["pixels"], "agreeing": stats["agreeing"]}

    def summary_fields(self, pooled: Stats, cases: list[Stats]) -> dict[str, Any]:
        values = [self.value(s) for s in cases]
        return {
            self.key: self.value(pooled),
            "min_pixel_agreement": min(values) if values else None,
            "disagreeing_pixels": pooled.get("pixels", 0) - pooled.get("agreeing", 0),
        }


class ConfidentAgreement(Metric):
    key, label = "confident_agreement", "confident"
    description = "agreement on pixels where the reference's top-1 minus top-2 logit margin exceeds the confidence margin"
    gates = (Gate("confident_agreement", "size", message="confident-pixel agreement {value:.5f} < {limit} (margin > {confidence_margin})"),)
    parameters = {"confidence_margin": 0.5}
    percent, digits = True, 3

    def measure(self, c: Comparison) -> Stats:
        confident = c.margin > c.parameters.get("confidence_margin", self.parameters["confidence_margin"])
        return {"confident": int(confident.sum()), "confident_agreeing": int(c.agree[confident].sum()), "pixels": int(c.agree.size)}

    def value(self, stats: Stats) -> float | None:
        return stats["confident_agreeing"] / stats["confident"] if stats.get("confident") else 1.0

    def case_fields(self, stats: Stats) -> dict[str, Any]:
        return {
            self.key: self.value(stats), "confident_fraction": stats["confident"] / stats["pixels"] if stats["pixels"] else 0.0,
            "confident": stats["confident"], "confident_agreeing": stats["confident_agreeing"],
        }  # fmt: skip

    def summary_fields(self, pooled: Stats, cases: list[Stats]) -> dict[str, Any]:
        return {self.key: self.value(pooled) if pooled.get("confident") else None}


class DisagreeMargin(Metric):
    key, label = "max_disagree_margin", "max disagree margin"
    description = "the largest reference top-2 margin at which the masks still disagree (near-ties say nothing)"
    digits = 3

    def measure(self, c: Comparison) -> Stats:
        return {"max_margin": float(c.margin[~c.agree].max()) if (~c.agree).any() else 0.0}

    def value(self, stats: Stats) -> float | None:
        return stats.get("max_margin")


class MeanIUVsReference(Metric):
    key, label = "mean_iu", "mIU vs ref"
    description = "mean IU of the engine's masks against the reference's (one confusion matrix when pooled)"
    gates = (Gate("min_mean_iu", "pooled", message="mean IU vs reference over all sizes {value:.4f} < {limit}"),)

    def measure(self, c: Comparison) -> Stats:
        return {"confusion": fast_hist(c.reference.mask, c.engine.mask, c.num_classes)}

    def value(self, stats: Stats) -> float | None:
        confusion = stats.get("confusion")
        return None if confusion is None else float(scores_from_hist(confusion).mean_iu)

    def summary_fields(self, pooled: Stats, cases: list[Stats]) -> dict[str, Any]:
        values = [self.value(s) for s in cases]
        return {"mean_iu_vs_reference": self.value(pooled), "min_mean_iu": min(values) if values else None}


class LogitDifference(Metric):
    key, label = "max_abs_logit_diff", "max |Δlogit|"
    description = "largest |engine - reference| logit (engines that output logits)"
    gates = (Gate("max_rel_logit_diff", "size", at_least=False, message="max |logit diff| {value:.3g} > {limit:.3g}", fraction=False),)
    digits = 3

    def measure(self, c: Comparison) -> Stats:
        if c.engine.logits is None:
            return {"max_abs_diff": None, "sum_abs_diff": None, "values": None, "max_abs_reference": None}
        diff = np.abs(c.engine.logits.astype(np.float32) - c.reference.logits)
        return {"max_abs_diff": float(diff.max()), "sum_abs_diff": float(diff.sum(dtype=np.float64)), "values": int(diff.size),
                "max_abs_reference": float(np.abs(c.reference.logits).max())}  # fmt: skip

    def value(self, stats: Stats) -> float | None:
        return stats.get("max_abs_diff")

    def limit_for(self, gate: Gate, limit: float, stats: Stats) -> float:
        return limit * max(1.0, stats["max_abs_reference"])  # relative to the logits' magnitude

    def case_fields(self, stats: Stats) -> dict[str, Any]:
        mean = stats["sum_abs_diff"] / stats["values"] if stats.get("values") else None
        return {self.key: self.value(stats), "mean_abs_logit_diff": mean}

    def summary_fields(self, pooled: Stats, cases: list[Stats]) -> dict[str, Any]:
        return {}


class EdgeShare(Metric):
    key, label = "disagree_near_edge", "on edges"
    description = f"disagreeing pixels within {EDGE_RADIUS_PX} px of a reference class boundary"
    column = False

    def measure(self, c: Comparison) -> Stats:
        wrong = np.nonzero(~c.agree)
        return {"near_edge": int(near_edge(c.reference.mask, wrong).sum()) if len(wrong[0]) else 0, "disagreeing": len(wrong[0])}

    def value(self, stats: Stats) -> float | None:
        return stats["near_edge"] / stats["disagreeing"] if stats.get("disagreeing") else None

    def case_fields(self, stats: Stats) -> dict[str, Any]:
        return {self.key: stats["near_edge"]}

    def summary_fields(self, pooled: Stats, cases: list[Stats]) -> dict[str, Any]:
        return {"disagree_near_edge_share": self.value(pooled), "edge_radius_px": EDGE_RADIUS_PX}


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` (after the others: its column comes last)."""
    METRICS[metric.key] = metric
    return metric


def unregister(key: str) -> None:
    METRICS.pop(key, None)


def limit_names() -> dict[str, str]:
    """Every limit a gate of a registered metric reads, and every metric parameter: name -> what it is."""
    names: dict[str, str] = {}
    for metric in METRICS.values():
        for gate in metric.gates:
            names[gate.limit] = (
                f"{'minimum' if gate.at_least else 'maximum'} {metric.label} ({'per size' if gate.scope == 'size' else 'over all sizes'})"
            )
        for name in metric.parameters:
            names[name] = f"parameter of {metric.label}"
    return names


def fraction_limits() -> set[str]:
    """The limits that are fractions (0..1)."""
    return {gate.limit for metric in METRICS.values() for gate in metric.gates if gate.fraction}


def parameter_defaults() -> dict[str, float]:
    return {name: value for metric in METRICS.values() for name, value in metric.parameters.items()}


for _metric in (PixelAgreement(), ConfidentAgreement(), DisagreeMargin(), MeanIUVsReference(), LogitDifference(), EdgeShare()):
    register(_metric)
