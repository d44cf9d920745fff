"""Prove that an engine's masks match the FP32 reference at many input sizes.

One function, :func:`validate`, serves ``fcn-deploy validate`` and the check that runs after every
export: it feeds the engine and the reference the same image-like inputs at a spread of sizes
(the profile's min and max, odd, prime, non-multiples of 32, extreme aspect ratios, seeded random
sizes) and measures, per size:

* pixel agreement of the argmax masks;
* agreement on *confident* pixels, where the reference's top-1 minus top-2 logit margin exceeds a
  threshold (disagreements on near-ties say nothing about the engine);
* the largest reference margin at which the masks still disagree;
* mean IU of the engine's mask against the reference mask;
* max and mean absolute logit difference (when the engine outputs logits);
* how many disagreeing pixels lie within :data:`EDGE_RADIUS_PX` of a reference class boundary
  ("edges or regions?": a few boundary pixels shifted is benign, a whole region flipped is a bug).

The verdict is scored the way the paper scores: over **every validated pixel at once**.  Pixel
agreement is pooled over all sizes, and mean IU comes from one confusion matrix (reference mask vs
engine mask) accumulated over every image and size.  Per size, only what is meaningful on one small
image is gated: a floor on pixel agreement (which a broken layer falls through), agreement on
confident pixels, and the logit tolerance.  Mean IU of one small image, over classes that cover a
few hundred pixels, is noise (a 67x509 INT8 case agreed on 99.8 % of pixels and scored 0.963), so
per-size mean IU is reported, never gated alone.

Inputs are synthetic scenes or real images, never noise: random weights on noise give near-tied
logits, and agreement on those measures nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backends import Prediction, Profile, Runner
from .data import SYNTHETIC_SEEDS
from .data.images import fit_to_size, list_images, load_rgb, preprocess
from .data.synthetic import make_scene
from .errors import FcnDeployError
from .fileio import sha256_file
from .metrics import fast_hist, scores_from_hist

#: Seed of the scenes used for validation (disjoint from training, validation and calibration).
VALIDATION_SEED = SYNTHETIC_SEEDS["test"]
#: A disagreeing pixel this close (Chebyshev distance, px) to a pixel of another reference class is "on an edge".
EDGE_RADIUS_PX = 2
#: Bins of the histogram of reference margins at disagreeing pixels: 0, then log-spaced 1e-3..100, then beyond.
MARGIN_BIN_EDGES = np.concatenate([[0.0], np.logspace(-3, 2, 21), [np.inf]])


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria.  ``None`` disables a criterion."""

    #: Pixel agreement pooled over every validated pixel (all sizes).
    pixel_agreement: float
    #: Floor on each size's own pixel agreement.
    size_floor: float | None = None
    #: Agreement on confident pixels, per size.
    confident_agreement: float | None = 1.0
    #: Mean IU of the engine's masks against the reference's, from one confusion matrix over every size.
    min_mean_iu: float | None = None
    #: Reference top-1 minus top-2 logit margin above which a pixel counts as confident.
    confidence_margin: float = 0.5
    #: Largest allowed |logit difference| per size, relative to max(1, max |reference logit|).
    max_rel_logit_diff: float | None = None


#: Documented defaults (README, "validate"); every field can be overridden on the command line.
#: FP16, from FP16 arithmetic measured against FP32 (torch float16, ``--emulate-fp16``; README, "FP16"):
#: on the default and the test model it flipped only pixels whose reference top-2 margin was below
#: 0.011 (bf16, 8x coarser rounding, below 0.071), agreeing on >= 99.988 % of pixels pooled and
#: >= 99.90 % per size (one pixel of 32x32).  The 0.25 margin leaves over 3x the bf16 figure for
#: FP16 kernels that accumulate in FP16.
DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(pixel_agreement=0.9999, size_floor=0.999, confident_agreement=1.0, confidence_margin=0.05),
    "fp16": Thresholds(pixel_agreement=0.999, size_floor=0.995, confident_agreement=1.0, confidence_margin=0.25),
    "int8": Thresholds(pixel_agreement=0.99, size_floor=0.98, confident_agreement=None, min_mean_iu=0.97, confidence_margin=2.0),
}
#: What export checks ORT against PyTorch with (FP32, plus a logit tolerance).
EXPORT_THRESHOLDS = Thresholds(
    pixel_agreement=0.9999, size_floor=0.999, confident_agreement=1.0, confidence_margin=0.05, max_rel_logit_diff=1e-3
)


@dataclass
class CaseResult:
    height: int
    width: int
    batch: int
    pixel_agreement: float
    confident_agreement: float
    confident_fraction: float
    max_disagree_margin: float
    mean_iu: float
    max_abs_logit_diff: float | None
    mean_abs_logit_diff: float | None
    passed: bool
    failures: list[str] = field(default_factory=list)
    #: Pixels, agreeing pixels, confident pixels and agreeing confident pixels (for pooling).
    pixels: int = 0
    agreeing: int = 0
    confident: int = 0
    confident_agreeing: int = 0
    #: Disagreeing pixels within EDGE_RADIUS_PX of a reference class boundary.
    disagree_near_edge: int = 0
    #: Reference-vs-engine confusion matrix of this case (rows: reference classes).
    confusion: np.ndarray | None = field(default=None, repr=False)
    #: The arithmetic the engine computed in (``Runner.arithmetic``: ``fp16-emulated``, ``bf16``, ...).
    arithmetic: str = ""

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("confusion")
        return data


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
        pixels = sum(c.pixels for c in self.cases)
        return sum(c.agreeing for c in self.cases) / pixels if pixels else None

    @property
    def confident_agreement(self) -> float | None:
        confident = sum(c.confident for c in self.cases)
        return sum(c.confident_agreeing for c in self.cases) / confident if confident else None

    @property
    def near_edge_share(self) -> float | None:
        """Of all disagreeing pixels, the share on a reference class boundary (None: no disagreement)."""
        disagreeing = sum(c.pixels - c.agreeing for c in self.cases)
        return sum(c.disagree_near_edge for c in self.cases) / disagreeing if disagreeing else None

    @property
    def mean_iu(self) -> float | None:
        return float(scores_from_hist(self.confusion).mean_iu) if self.cases and self.num_classes else None

    @property
    def failures(self) -> list[str]:
        """Why the pooled verdict fails (the per-size reasons are on the cases)."""
        if not self.cases:
            return ["no sizes were validated"]
        t, failures = self.thresholds, []
        if self.pixel_agreement < t.pixel_agreement:
            failures.append(f"pixel agreement over all sizes {self.pixel_agreement:.5f} < {t.pixel_agreement}")
        if t.min_mean_iu is not None and self.mean_iu < t.min_mean_iu:
            failures.append(f"mean IU vs reference over all sizes {self.mean_iu:.4f} < {t.min_mean_iu}")
        return failures

    @property
    def passed(self) -> bool:
        return not self.failures and all(c.passed for c in self.cases)

    @property
    def failing_sizes(self) -> list[str]:
        return [f"{c.height}x{c.width}" for c in self.cases if not c.passed]

    def summary(self) -> dict[str, object]:
        agreements = [c.pixel_agreement for c in self.cases]
        return {
            "sizes": len(self.cases),
            "failed": len(self.failing_sizes),
            "pixel_agreement": self.pixel_agreement,
            "confident_agreement": self.confident_agreement,
            "mean_iu_vs_reference": self.mean_iu,
            "min_pixel_agreement": min(agreements) if agreements else None,
            "min_mean_iu": min(c.mean_iu for c in self.cases) if self.cases else None,
            "max_disagree_margin": max(c.max_disagree_margin for c in self.cases) if self.cases else None,
            "disagreeing_pixels": sum(c.pixels - c.agreeing for c in self.cases),
            "disagree_near_edge_share": self.near_edge_share,
            "edge_radius_px": EDGE_RADIUS_PX,
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "engine": self.engine,
            "backend": self.backend,
            "precision": self.precision,
            "arithmetic": self.arithmetic or self.precision,
            "reference": self.reference,
            "thresholds": asdict(self.thresholds),
            "summary": self.summary(),
            "failures": self.failures if not self.passed else [],
            "failing_sizes": self.failing_sizes,
            "class_names": list(self.class_names),
            "confusion": self.confusion.tolist() if self.cases else [],
            "cases": [c.to_dict() for c in self.cases],
        }


# --------------------------------------------------------------------------- sizes and inputs


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"97x129,333x517"`` -> ``[(97, 129), (333, 517)]`` (height x width)."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise FcnDeployError(f"bad size {item!r}: write HEIGHTxWIDTH, e.g. 97x129") from None
        if h <= 0 or w <= 0:
            raise FcnDeployError(f"bad size {item!r}: height and width must be positive")
        sizes.append((h, w))
    if not sizes:
        raise FcnDeployError("no sizes given: write e.g. --sizes 97x129,333x517")
    return sizes


def spread_sizes(profile: Profile, random_sizes: int = 4, seed: int = 0, cap: int | None = None) -> list[tuple[int, int]]:
    """A spread of (height, width) inside ``profile``: min, max, opt, odd, prime, non-multiples of
    32, extreme aspect ratios, and ``random_sizes`` seeded random sizes.  ``cap`` bounds the largest
    side (to keep CPU checks quick) without dropping the profile's min."""
    (_, h_min, w_min), (_, h_opt, w_opt), (_, h_max, w_max) = profile.min, profile.opt, profile.max
    if cap:
        h_max, w_max = min(h_max, max(cap, h_min)), min(w_max, max(cap, w_min))
    candidates = [
        (h_min, w_min),
        (h_max, w_max),
        (h_opt, w_opt),
        (97, 129),  # odd
        (127, 131),  # primes
        (211, 173),  # primes, landscape
        (255, 257),  # just off a multiple of 32 on both sides
        (h_min, min(w_max, 8 * w_min + 5)),  # extreme aspect: wide
        (min(h_max, 6 * h_min + 7), w_min),  # extreme aspect: tall
        (333, 517),
    ]
    rng = np.random.default_rng(seed)
    for _ in range(random_sizes):
        candidates.append((int(rng.integers(h_min, h_max + 1)), int(rng.integers(w_min, w_max + 1))))
    sizes: list[tuple[int, int]] = []
    for h, w in candidates:
        h, w = min(max(h, h_min), h_max), min(max(w, w_min), w_max)
        if (h, w) not in sizes:
            sizes.append((h, w))
    return sizes


class InputSource:
    """Image-like uint8 inputs of any size: synthetic scenes, or real images fitted to the size."""

    def __init__(self, images_dir: str | Path | None = None, seed: int = VALIDATION_SEED):
        self.seed = seed
        self.images: list[np.ndarray] = []
        if images_dir is not None:
            files = list_images(images_dir) if Path(images_dir).is_dir() else []
            if not files:
                raise FcnDeployError(f"--images {images_dir}: no images found (jpg/png/...)")
            self.images = [load_rgb(f, convert=True) for f in files]

    def batch(self, height: int, width: int, batch: int, index: int) -> np.ndarray:
        if self.images:
            picks = [self.images[(index * batch + i) % len(self.images)] for i in range(batch)]
            return np.stack([fit_to_size(img, height, width) for img in picks])
        return np.stack([make_scene(self.seed, index * batch + i, height, width)[0] for i in range(batch)])


# --------------------------------------------------------------------------- comparison


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


def compare(reference: Prediction, engine: Prediction, num_classes: int, thresholds: Thresholds) -> CaseResult:
    """Score one size: the figures, and the per-size criteria (floor, confident pixels, logits)."""
    assert reference.logits is not None, "the reference must output logits"
    ref_mask, eng_mask = reference.mask, engine.mask
    if eng_mask.shape != ref_mask.shape:
        raise FcnDeployError(f"engine mask has shape {eng_mask.shape}, the reference {ref_mask.shape}")
    agree = ref_mask == eng_mask
    margin = top2_margin(reference.logits)
    confident = margin > thresholds.confidence_margin
    n_conf = int(confident.sum())
    n_conf_agree = int(agree[confident].sum())
    confident_agreement = n_conf_agree / n_conf if n_conf else 1.0
    max_disagree = float(margin[~agree].max()) if (~agree).any() else 0.0
    hist = fast_hist(ref_mask, eng_mask, num_classes)
    mean_iu = scores_from_hist(hist).mean_iu
    max_diff = mean_diff = None
    if engine.logits is not None:
        diff = np.abs(engine.logits.astype(np.float32) - reference.logits)
        max_diff, mean_diff = float(diff.max()), float(diff.mean())
    n_agree = int(agree.sum())
    pixel_agreement = n_agree / agree.size
    n_near_edge = int(near_edge(ref_mask, np.nonzero(~agree)).sum()) if n_agree < agree.size else 0
    failures = []
    if thresholds.size_floor is not None and pixel_agreement < thresholds.size_floor:
        failures.append(f"pixel agreement {pixel_agreement:.5f} < the per-size floor {thresholds.size_floor}")
    if thresholds.confident_agreement is not None and confident_agreement < thresholds.confident_agreement:
        failures.append(
            f"confident-pixel agreement {confident_agreement:.5f} < {thresholds.confident_agreement} "
            f"(margin > {thresholds.confidence_margin})"
        )
    if thresholds.max_rel_logit_diff is not None and max_diff is not None:
        limit = thresholds.max_rel_logit_diff * max(1.0, float(np.abs(reference.logits).max()))
        if max_diff > limit:
            failures.append(f"max |logit diff| {max_diff:.3g} > {limit:.3g}")
    n, h, w = ref_mask.shape
    return CaseResult(
        height=h, width=w, batch=n, pixel_agreement=pixel_agreement, confident_agreement=confident_agreement,
        confident_fraction=n_conf / agree.size, max_disagree_margin=max_disagree, mean_iu=float(mean_iu),
        max_abs_logit_diff=max_diff, mean_abs_logit_diff=mean_diff, passed=not failures, failures=failures,
        pixels=int(agree.size), agreeing=n_agree, confident=n_conf, confident_agreeing=n_conf_agree,
        disagree_near_edge=n_near_edge, confusion=hist,
    )  # fmt: skip


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


def validate(
    engine: Runner,
    reference: Runner,
    sizes: Sequence[tuple[int, int]],
    thresholds: Thresholds,
    inputs: InputSource | None = None,
    batch: int = 1,
    batch_sizes: dict[tuple[int, int], int] | None = None,
    on_case: Callable[[CaseResult], None] | None = None,
    keep_examples: ExampleKeeper | None = None,
) -> ValidationReport:
    """Run ``engine`` and ``reference`` on the same inputs at every size; compare the masks.
    ``keep_examples`` keeps a few images and a margin histogram for the HTML page."""
    inputs = inputs or InputSource()
    meta = engine.meta
    cases = []
    if keep_examples is not None:
        keep_examples.palette = [list(colour) for colour in meta.palette]
    for index, (height, width) in enumerate(sizes):
        n = (batch_sizes or {}).get((height, width), batch)
        engine.profile.check(n, height, width)
        images = inputs.batch(height, width, n, index)
        x = preprocess(images, meta.mean, meta.std)
        reference_prediction, engine_prediction = reference.infer(x), engine.infer(x)
        case = compare(reference_prediction, engine_prediction, meta.num_classes, thresholds)
        case.arithmetic = engine.arithmetic
        cases.append(case)
        if keep_examples is not None:
            keep_examples.offer(case, images, reference_prediction, engine_prediction)
        if on_case:
            on_case(case)
    return ValidationReport(
        engine=engine.path, backend=engine.backend, precision=engine.precision, reference=reference.path,
        thresholds=thresholds, cases=cases, num_classes=meta.num_classes, class_names=list(meta.class_names),
        arithmetic=engine.arithmetic,
    )  # fmt: skip


#: What each arithmetic label means, for the printed verdict.
ARITHMETIC_NOTES = {
    "fp16-emulated": "FP16-rounded weights and casts, FP32 arithmetic: FP16 rounding of activations is not exercised",
    "bf16": "real reduced-precision arithmetic, coarser than FP16",
}


def case_line(case: CaseResult) -> str:
    """One human line per size, marked with a tick or a cross (export prints these)."""
    mark = "[green]✓[/]" if case.passed else "[red]✗[/]"
    diff = f"max|Δ| {case.max_abs_logit_diff:.2e}  " if case.max_abs_logit_diff is not None else ""
    text = (
        f"{mark} {case.batch}x3x{case.height}x{case.width}  {diff}mask agreement {case.pixel_agreement * 100:.4f}%  "
        f"confident {case.confident_agreement * 100:.3f}%  mIU {case.mean_iu:.4f}"
    )
    return text + (f"  [red]{'; '.join(case.failures)}[/]" if case.failures else "")


def thresholds_for(
    precision: str,
    min_agreement: float | None = None,
    min_confident: float | None = None,
    min_miou: float | None = None,
    margin: float | None = None,
    min_size_agreement: float | None = None,
) -> Thresholds:
    """The documented defaults for ``precision`` with any overrides applied."""
    from dataclasses import replace

    if precision not in DEFAULT_THRESHOLDS:
        raise FcnDeployError(f"unknown precision {precision!r}; choose one of {', '.join(DEFAULT_THRESHOLDS)}")
    base = DEFAULT_THRESHOLDS[precision]
    overrides = {
        "pixel_agreement": min_agreement,
        "size_floor": min_size_agreement,
        "confident_agreement": min_confident,
        "min_mean_iu": min_miou,
        "confidence_margin": margin,
    }
    for name, value in overrides.items():
        if value is not None and name != "confidence_margin" and not 0.0 <= value <= 1.0:
            raise FcnDeployError(f"threshold {name} = {value}: must be between 0 and 1")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def validate_engine(
    engine_path: str | Path,
    reference_path: str | Path,
    sizes: str | None = None,
    random_sizes: int = 4,
    images: str | Path | None = None,
    batch: int = 1,
    precision: str | None = None,
    min_agreement: float | None = None,
    min_confident: float | None = None,
    min_miou: float | None = None,
    margin: float | None = None,
    max_side: int | None = None,
    seed: int = 0,
    console=None,
    min_size_agreement: float | None = None,
    keep_examples: ExampleKeeper | None = None,
    emulate_fp16: bool = False,
    server: str | None = None,
    model: str = "fcn",
) -> ValidationReport:
    """``fcn-deploy validate``: load both, pick sizes and thresholds, compare, print a table.

    ``emulate_fp16``: ``engine_path`` is a checkpoint, run with FP16 weights and activations (torch
    float16) and judged by the FP16 thresholds: what FP16 arithmetic alone costs the model.  With
    ``server``, the engine is model ``model`` on that Triton server (``engine_path`` is then unused)."""
    from rich.console import Console

    from .backends import is_checkpoint, open_reference, open_runner
    from .backends.remote import RemoteRunner
    from .backends.torch import TorchRunner

    console = console or Console()
    if emulate_fp16 and not is_checkpoint(Path(engine_path)):
        raise FcnDeployError(f"--emulate-fp16 runs a PyTorch checkpoint in float16; {engine_path} is not a checkpoint (.pt)")
    if server:
        opened = RemoteRunner(server, model)
    else:
        opened = TorchRunner(engine_path, precision="fp16") if emulate_fp16 else open_runner(engine_path)
    with opened as engine, open_reference(reference_path, engine.meta) as reference:
        engine_path = engine.path if server else engine_path
        if (reference.meta.arch, reference.meta.num_classes) != (engine.meta.arch, engine.meta.num_classes):
            raise FcnDeployError(
                f"{reference_path} is {reference.meta.arch} with {reference.meta.num_classes} classes but {engine_path} "
                f"was built from {engine.meta.arch} with {engine.meta.num_classes}; pass the engine's own reference "
                "(its checkpoint, or the ONNX it was exported or adopted from)"
            )
        if engine.meta.source_sha256 and reference.path:
            own = reference.meta.source_sha256 if getattr(reference, "has_own_meta", True) else ""
            if engine.meta.source_sha256 not in (sha256_file(reference.path), own):
                what, verb = ("ONNX", "adopted") if engine.meta.adopted else ("checkpoint", "exported")
                console.print(f"[yellow]note: {reference_path} is not the {what} {engine_path} was {verb} from[/]")
        thresholds = thresholds_for(precision or engine.precision, min_agreement, min_confident, min_miou, margin, min_size_agreement)
        size_list = parse_sizes(sizes) if sizes else spread_sizes(engine.profile, random_sizes, seed, cap=max_side)
        console.print(f"{len(size_list)} sizes; thresholds: {describe_thresholds(thresholds)}")
        with console.status("validating") as status:
            report = validate(
                engine, reference, size_list, thresholds, InputSource(images), batch=batch,
                on_case=lambda case: status.update(f"validated {case.height}x{case.width}"), keep_examples=keep_examples,
            )  # fmt: skip
        arithmetic = "" if engine.arithmetic == engine.precision else f", {engine.arithmetic} arithmetic"
        title = f"validate {Path(engine_path).name} ({engine.backend}, {engine.precision}{arithmetic}) vs {Path(reference_path).name}"
        print_validation(console, report, title)
        if engine.arithmetic in ARITHMETIC_NOTES:
            console.print(f"arithmetic: {engine.arithmetic}: {ARITHMETIC_NOTES[engine.arithmetic]}")
        return report


def describe_thresholds(t: Thresholds) -> str:
    parts = [f"agreement over all sizes >= {t.pixel_agreement}"]
    if t.size_floor is not None:
        parts.append(f"per size >= {t.size_floor}")
    if t.confident_agreement is not None:
        parts.append(f"confident pixels (margin > {t.confidence_margin}) >= {t.confident_agreement}")
    if t.min_mean_iu is not None:
        parts.append(f"mIU vs reference over all sizes >= {t.min_mean_iu}")
    return ", ".join(parts)


def print_validation(console, report: ValidationReport, title: str) -> None:
    """A table with one row per size (tick or cross), then the pooled verdict naming what failed."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("", "N x H x W", "agreement", "confident", "max disagree margin", "mIU vs ref", "max |Δlogit|"):
        table.add_column(column, justify="left" if column in ("", "N x H x W") else "right")
    for case in report.cases:
        table.add_row(
            "[green]✓[/]" if case.passed else "[red]✗[/]",
            f"{case.batch}x{case.height}x{case.width}",
            f"{case.pixel_agreement * 100:.4f}%",
            f"{case.confident_agreement * 100:.3f}%",
            f"{case.max_disagree_margin:.3g}",
            f"{case.mean_iu:.4f}",
            "-" if case.max_abs_logit_diff is None else f"{case.max_abs_logit_diff:.3g}",
        )
    console.print(table)
    summary = report.summary()
    if not report.cases:
        console.print("[red]FAILED[/]: no sizes were validated")
        return
    pooled = (
        f"{summary['sizes']} sizes, {sum(c.pixels for c in report.cases):,} pixels: agreement {summary['pixel_agreement'] * 100:.4f}%, "
        f"mIU vs reference {summary['mean_iu_vs_reference']:.4f} (one confusion matrix over all sizes); "
        f"lowest per size {summary['min_pixel_agreement'] * 100:.4f}%"
    )
    if report.passed:
        console.print(f"[green]PASSED[/] {pooled}")
        return
    for case in report.cases:
        if not case.passed:
            console.print(f"[red]✗ {case.height}x{case.width}[/]: {'; '.join(case.failures)}")
    for failure in report.failures:
        console.print(f"[red]✗ all sizes[/]: {failure}")
    where = f" at {len(report.failing_sizes)} of {summary['sizes']} sizes: {', '.join(report.failing_sizes)}" if report.failing_sizes else ""
    console.print(f"[red]FAILED[/]{where}; {pooled}")
