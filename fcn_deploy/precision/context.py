"""What a precision transform is given: the calibration set and the options of the build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.calibration import CalibrationSet
from ..events import SILENT, Listener


@dataclass
class TransformContext:
    """Everything a transform ``(model, context) -> (model, report)`` may read."""

    #: The preprocessed calibration images (None for precisions that need none).
    calibration: CalibrationSet | None = None
    #: INT8: how activation ranges are estimated (``minmax``, ``entropy``, ``percentile``).
    calib_method: str = "minmax"
    #: INT8: the activation encoding of the compiling backend (a key of ``int8.INT8_ENCODINGS``).
    encoding: str = "int8-symmetric"
    #: Where calibration ranges are cached (None: no cache).
    cache_dir: Path | None = None
    #: INT8: nodes kept in float (by name): their inputs get no Q/DQ.
    float_nodes: tuple[str, ...] = ()
    #: INT8: the dtype float nodes and unquantized ops compute in ("float32", or "float16" on TensorRT).
    float_dtype: str = "float32"
    #: INT8: fold each quantized conv's mean output error into its bias (:mod:`.bias`).
    bias_correction: bool = False
    listener: Listener = field(default=SILENT)
