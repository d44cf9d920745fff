"""``debug precision``: which nodes of an INT8 graph or engine break the masks, measured on its backend.

For every quantized node, the output's relative L2 error and cosine similarity against the FP32
graph on the same image-like inputs, and the error the node introduces (:mod:`.precision.attribution`);
then, for the worst nodes, the mask agreement with FP32 when only that node is kept in float.  An
engine is measured on its own backend (OpenVINO fuses and quantizes on its own terms) through the
graph its manifest names; a plain Q/DQ ONNX on ONNX Runtime, or on ``backend``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import backends
from .artefacts import Kind, kind_of
from .backends import read_manifest
from .data.calibration import load_calibration
from .data.images import preprocess
from .errors import FcnDeployError
from .events import SILENT, Listener
from .meta import read_onnx_meta, read_onnx_props
from .onnxkit import read_onnx
from .precision.attribution import node_errors, quantized_nodes
from .precision.int8 import Quantizer, prepare
from .validation import InputSource

#: Sizes the errors are measured at (odd, a small one, a wider one).
DEBUG_SIZES = [(97, 129), (48, 64), (160, 224)]


@dataclass
class DebugOptions:
    #: How many of the worst nodes are also measured kept in float alone (needs the calibration set).
    revert_top: int = 8
    sizes: list[tuple[int, int]] | None = None
    #: Run a plain Q/DQ ONNX on this backend (an engine uses its own).
    backend: str | None = None
    images: Path | None = None


def debug_precision(target: str | Path, reference: str | Path, options: DebugOptions | None = None, *,
                    listener: Listener = SILENT) -> dict[str, Any]:  # fmt: skip
    """The report: every quantized node's errors, worst first, and the agreement with the worst kept in float."""
    options = options or DebugOptions()
    target, reference = Path(target), Path(reference)
    manifest = read_manifest(target) if kind_of(target) is Kind.ENGINE else None
    graph_path = Path(manifest["precision_onnx"]) if manifest else target
    if not graph_path.is_file():
        raise FcnDeployError(
            f"{target}: its manifest names the INT8 graph {graph_path}, which is not here; copy it back or rebuild the engine"
        )
    int8 = onnx.load(str(graph_path))
    if not quantized_nodes(int8):
        raise FcnDeployError(
            f"{graph_path}: has no quantized nodes; give an INT8 graph or engine (build one with `fcn-deploy build-engine --int8`)"
        )
    backend = backends.engine_backend(target, manifest) if manifest else backends.get(options.backend or backends.plain_onnx_backend().name)
    float_model = read_onnx(reference)
    if kind_of(reference) is not Kind.ONNX or read_onnx_props(float_model).get("fcn_deploy.precision", "fp32") != "fp32":
        raise FcnDeployError(f"{reference}: the reference must be the FP32 ONNX the INT8 graph was built from", options=("reference",))
    meta = read_onnx_meta(float_model, str(reference))
    with tempfile.TemporaryDirectory(prefix="fcn-deploy-debug-") as tmp:
        listener.note(f"preparing the FP32 graph {reference.name} as quantization saw it")
        encoding = read_onnx_props(int8).get("fcn_deploy.int8_encoding", backend.int8_encoding)
        prepared = prepare(float_model, Path(tmp, "prep.onnx"), encoding)
        inputs = InputSource(options.images)
        sizes = options.sizes or DEBUG_SIZES
        batches = [preprocess(inputs.batch(h, w, 1, i), meta.mean, meta.std) for i, (h, w) in enumerate(sizes)]
        listener.note(
            f"measuring {len(quantized_nodes(int8))} quantized nodes on {backend.name} at {', '.join(f'{h}x{w}' for h, w in sizes)}"
        )
        errors = node_errors(prepared, int8, batches, backend.intermediate_outputs)
        calibration = _calibration(manifest, meta) if options.revert_top else None
        if calibration is not None:
            method = manifest["transform"]["calibration"].get("calibration_method", "minmax") if manifest else "minmax"
            with Quantizer(float_model, calibration, method, calibration.folder / ".cache", encoding) as quantizer:
                reference_masks = [_masks(backend, prepared, batch) for batch in batches]
                listener.start(
                    "debug", total=min(options.revert_top, len(errors)), description="keeping each worst node in float", unit="nodes"
                )
                for error in errors[: options.revert_top]:
                    graph = quantizer.quantize((error.name,))
                    agree = sum(int((_masks(backend, graph, b) == m).sum()) for b, m in zip(batches, reference_masks))
                    error.agreement_if_float = agree / sum(m.size for m in reference_masks)
                    listener.advance("debug", 1)
                listener.finish("debug")
        plain = [_masks(backend, int8, b) for b in batches]
        reference_masks = [_masks(backend, prepared, b) for b in batches] if calibration is None else reference_masks
        agreement = sum(int((p == r).sum()) for p, r in zip(plain, reference_masks)) / sum(r.size for r in reference_masks)
    return {
        "target": str(target), "graph": str(graph_path), "reference": str(reference), "backend": backend.name,
        "sizes": [list(s) for s in sizes], "agreement": agreement, "quantized_nodes": len(errors),
        "float_nodes": ((manifest or {}).get("int8_check") or {}).get("float_nodes", []),
        "nodes": [e.to_dict() for e in errors],
    }  # fmt: skip


def _calibration(manifest: dict | None, meta):
    """The calibration set an engine was built from (a plain graph has no record of one: no revert figures)."""
    folder = Path(((manifest or {}).get("transform") or {}).get("calibration", {}).get("folder", ""))
    if not manifest or not folder.is_dir():
        return None
    return load_calibration(folder, meta, max_hw=tuple(manifest["profile"]["max"][1:]))


def _masks(backend: backends.Backend, model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    """The argmax mask of ``model``'s logits, run as ``backend`` runs it."""
    names = [o.name for o in model.graph.output]
    name = "logits" if "logits" in names else names[0]
    logits = backend.intermediate_outputs(model, [name])(batch)[name]
    return logits.argmax(1)
