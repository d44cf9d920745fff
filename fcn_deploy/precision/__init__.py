"""Precision as ONNX transforms: graphs that ONNX Runtime runs on the CPU and every backend compiles.

TensorRT 11 builds only strongly typed networks (no FP16/INT8 builder flags, no calibrators), so the
precision is decided here, in the ONNX.  :func:`apply_precision` runs the transform a precision's
registry entry names (:mod:`fcn_deploy.precisions`): :mod:`.fp16` and :mod:`.int8` for the built-in
ones, with calibration images where the entry needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from .. import precisions
from ..data.calibration import DEFAULT_CALIB_DIR, generate_default_calibration, load_calibration
from ..data.images import list_images
from ..data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from ..errors import FcnDeployError, library_errors, require_file
from ..events import SILENT, Listener
from ..meta import read_onnx_meta, write_onnx_meta
from ..onnxkit import save_onnx
from .context import TransformContext
from .int8 import CALIB_METHODS, INT8_ENCODINGS, INT8_OP_TYPES, INT8_PLACEMENT, calibration_cache_key, convert_int8

__all__ = [
    "CALIB_METHODS", "INT8_ENCODINGS", "INT8_OP_TYPES", "INT8_PLACEMENT", "TransformContext", "apply_precision",
    "calibration_cache_key", "convert_int8", "load_calibration_for",
]  # fmt: skip


def load_calibration_for(meta, calib_dir: str | Path | None, max_hw: tuple[int, int] | None, listener: Listener = SILENT):
    """The calibration set for ``meta``'s model: ``calib_dir``, or the default folder (generated with
    synthetic scenes when the model was trained on them)."""
    folder = Path(calib_dir) if calib_dir is not None else DEFAULT_CALIB_DIR
    if calib_dir is None and not (folder.is_dir() and list_images(folder)):
        if meta.class_names != SYNTHETIC_CLASSES:
            raise FcnDeployError(
                f"no calibration images in {folder}: give a calibration folder with images like {meta.arch}'s real data "
                "(the generated synthetic set only suits models trained on it)", options=("calib_dir",),
            )  # fmt: skip
        listener.note(f"generating the default calibration set in {folder} (synthetic scenes, held-out seed)")
        generate_default_calibration(folder)
    return load_calibration(folder, meta, max_hw=max_hw)


def apply_precision(
    src: str | Path,
    out: str | Path,
    precision: str,
    *,
    calib_dir: str | Path | None = None,
    calib_method: str = "minmax",
    max_hw: tuple[int, int] | None = None,
    int8_encoding: str = "int8-symmetric",
    float_nodes: Sequence[str] = (),
    float_dtype: str = "float32",
    listener: Listener = SILENT,
) -> dict[str, object]:
    """Write ``src`` (an exported FP32 ONNX) transformed to ``precision`` at ``out``.

    ``int8_encoding`` is the activation encoding of an INT8 graph (the compiling backend's
    ``int8_encoding``); ``float_nodes`` are INT8 nodes kept in float.  Returns a report for the
    manifest: the nodes kept in float, the calibration hash and cache state, ...
    """
    entry = precisions.get(precision)
    if entry.quantized and calib_method not in CALIB_METHODS:
        raise FcnDeployError(f"unknown calibration method {calib_method!r}; choose one of {', '.join(CALIB_METHODS)}",
                             options=("calib_method",))  # fmt: skip
    src = require_file(src, "ONNX model")
    model = onnx.load(str(src))
    meta = read_onnx_meta(model, str(src))
    report: dict[str, object] = {"precision": precision}
    props = {"fcn_deploy.precision": precision}
    if entry.transform is None:
        transformed = model
    else:
        context = TransformContext(calib_method=calib_method, encoding=int8_encoding, float_nodes=tuple(float_nodes),
                                   float_dtype=float_dtype, listener=listener)  # fmt: skip
        if entry.needs_calibration:
            calibration = load_calibration_for(meta, calib_dir, max_hw, listener)
            context.calibration, context.cache_dir = calibration, calibration.folder / ".cache"
            report["calibration"] = {"folder": str(calibration.folder), "images": len(calibration.files),
                                     "skipped": len(calibration.skipped), "sha256": calibration.sha256}  # fmt: skip
        with library_errors(src, f"the {precision} transform", "build FP32 instead, or simplify the graph (onnxslim) and try again"):
            transformed, details = entry.load_transform()(model, context)
        props.update(details.pop("props", {}))
        if isinstance(details.get("calibration"), dict) and "calibration" in report:
            report["calibration"].update(details.pop("calibration"))  # type: ignore[union-attr]
        report.update(details)
    write_onnx_meta(transformed, meta, props)
    save_onnx(transformed, out)
    return report
