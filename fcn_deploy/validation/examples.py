"""What a validation page shows beyond the JSON: a few of the worst images, and where the masks disagree."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Prediction
from .metrics import near_edge, top2_margin
from .report import CaseResult

#: Bins of the histogram of reference margins at disagreeing pixels: 0, then log-spaced 1e-3..100, then beyond.
MARGIN_BIN_EDGES = np.concatenate([[0.0], np.logspace(-3, 2, 21), [np.inf]])


@dataclass
class Example:
    """One validated image kept for a report page: the input, both masks and the reference's margin."""

    height: int
    width: int
    #: The size's agreement (what ranks the sizes) and this image's own.
    case_agreement: float
    pixel_agreement: float
    passed: bool
    failures: list[str]
    #: This image's disagreeing pixels, and those of them within EDGE_RADIUS_PX of a reference class boundary.
    disagreeing: int
    near_edge: int
    image: np.ndarray = field(repr=False)  # uint8 H x W x 3
    reference_mask: np.ndarray = field(repr=False)  # H x W class indices
    engine_mask: np.ndarray = field(repr=False)
    margin: np.ndarray = field(repr=False)  # float16 H x W: the reference's top-1 minus top-2 logit


class ExampleKeeper:
    """What a report page shows beyond the JSON, kept with bounded memory during :func:`validate`:
    one image (the batch's worst) for each of the ``worst`` sizes by agreement and for up to
    ``max_failing`` failing sizes (the worst of them), sizes with no disagreement left out; and a
    fixed-bin histogram (:data:`MARGIN_BIN_EDGES`) of the reference margin at every disagreeing pixel."""

    def __init__(self, worst: int = 3, max_failing: int = 8):
        self.worst, self.max_failing = worst, max_failing
        self.palette: list[list[int]] = []  # the model's, set by validate(): the page colours masks with it
        self.margin_counts = np.zeros(len(MARGIN_BIN_EDGES) - 1, dtype=np.int64)
        self._kept: list[Example] = []

    @property
    def examples(self) -> list[Example]:
        """The kept images, worst size first."""
        return sorted(self._kept, key=lambda e: e.case_agreement)

    def offer(self, case: CaseResult, images: np.ndarray, reference: Prediction, engine: Prediction) -> None:
        disagree = reference.mask != engine.mask
        where = np.nonzero(disagree)
        if not len(where[0]):
            return
        assert reference.logits is not None, "the reference must output logits"
        at = np.moveaxis(reference.logits[where[0], :, where[1], where[2]], 0, -1)[None, ..., None]  # 1 x C x D x 1
        self.margin_counts += np.histogram(top2_margin(at).ravel(), MARGIN_BIN_EDGES)[0]
        worst = int(disagree.reshape(len(disagree), -1).sum(1).argmax())
        ref_mask, eng_mask, wrong = reference.mask[worst], engine.mask[worst], disagree[worst]
        labels = np.uint8 if max(int(ref_mask.max()), int(eng_mask.max())) < 256 else np.int32
        self._kept.append(Example(
            height=case.height, width=case.width, case_agreement=case.pixel_agreement,
            pixel_agreement=1.0 - int(wrong.sum()) / wrong.size, passed=case.passed, failures=list(case.failures),
            disagreeing=int(wrong.sum()), near_edge=int(near_edge(ref_mask[None], np.nonzero(wrong[None])).sum()),
            image=np.ascontiguousarray(images[worst], dtype=np.uint8), reference_mask=ref_mask.astype(labels),
            engine_mask=eng_mask.astype(labels), margin=top2_margin(reference.logits[worst : worst + 1])[0].astype(np.float16),
        ))  # fmt: skip
        ranked = self.examples
        failing = [e for e in ranked if not e.passed][: self.max_failing]
        keep = {id(e) for e in ranked[: self.worst] + failing}
        self._kept = [e for e in ranked if id(e) in keep]
