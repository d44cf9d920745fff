"""Prove that an engine's masks match the FP32 reference at many input sizes.

The engine and the reference (a checkpoint run by PyTorch, or an FP32 ONNX run by ONNX Runtime)
get the same image-like inputs at a spread of sizes (:mod:`.sizes`, :mod:`.inputs`); every
registered metric (:mod:`.metrics`: pixel agreement, agreement on confident pixels, mean IU
against the reference, logit differences, ...) scores each size, and pools over all of them.

The verdict is scored the way the paper scores: over **every validated pixel at once**.  Pixel
agreement is pooled over all sizes, and mean IU comes from one confusion matrix accumulated over
every image and size.  Per size, only what is meaningful on one small image is gated: a floor on
pixel agreement (which a broken layer falls through), agreement on confident pixels, and the logit
tolerance.  Mean IU of one small image, over classes that cover a few hundred pixels, is noise, so
per-size mean IU is reported, never gated alone.
"""

from .examples import MARGIN_BIN_EDGES, Example, ExampleKeeper
from .inputs import VALIDATION_SEED, InputSource
from .metrics import EDGE_RADIUS_PX, METRICS, Comparison, Gate, Metric, near_edge, top2_margin
from .report import CaseResult, ValidationReport, compare
from .run import ValidateOptions, validate, validate_engine
from .sizes import parse_sizes, spread_sizes
from .thresholds import DEFAULT_THRESHOLDS, Thresholds, default_thresholds, export_thresholds, thresholds_for

__all__ = [
    "DEFAULT_THRESHOLDS", "EDGE_RADIUS_PX", "MARGIN_BIN_EDGES", "METRICS", "CaseResult", "Comparison", "Example",
    "ExampleKeeper", "Gate", "InputSource", "Metric", "Thresholds", "VALIDATION_SEED", "ValidateOptions", "ValidationReport",
    "compare", "default_thresholds", "export_thresholds", "near_edge", "parse_sizes", "spread_sizes", "thresholds_for",
    "top2_margin", "validate", "validate_engine",
]  # fmt: skip
