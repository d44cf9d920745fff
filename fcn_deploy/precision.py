"""Precision as ONNX transforms: FP16 graphs and INT8 Q/DQ graphs that ONNX Runtime runs on CPU.

TensorRT 11 builds only strongly typed networks (no FP16/INT8 builder flags, no calibrators), so the
precision is decided here, in the ONNX, and every backend compiles the same graph.

FP16 (as ModelOpt AutoCast does it)
    A reference FP32 run on calibration images records the largest magnitude of every
    intermediate tensor.  Nodes whose outputs exceed ``data_max`` (512) or whose initialisers exceed
    ``init_max`` (65504, the FP16 maximum) stay FP32; everything else is FP16.  The model's I/O
    stays **float32** (``keep_io_types``): the first node casts the image to FP16 and the logits are
    cast back, so every precision is fed by the same preprocessing.

INT8 (explicit quantization)
    ``quant_pre_process`` then ``quantize_static`` in QDQ format, per-channel symmetric int8 weights,
    float biases (TensorRT cannot parse int32 bias Q/DQ; ONNX Runtime quantizes biases itself when it
    fuses).  Quantized ops: Conv, Add, MaxPool, AveragePool, GlobalAveragePool, Mul,
    BatchNormalization (what ModelOpt quantizes for TensorRT).  **ConvTranspose is excluded** (stays
    FP32): TensorRT does not support per-channel quantization of deconvolutions, and the bilinear
    upsampling layers are a small share of the compute.

    The activation encoding is the one the compiling backend runs best (``INT8_ENCODINGS``; each
    backend declares its own, see :mod:`fcn_deploy.backends`):

    * ``int8-symmetric``: symmetric **int8** activations, zero points 0, as TensorRT requires;
    * ``uint8-asymmetric``: asymmetric **uint8** activations, ONNX Runtime's recommendation for
      x86.  Measured here: with symmetric int8 activations ORT cannot fold a ReLU into the
      quantized conv (zero point 0 cannot express max(0, x)), so every Conv+ReLU stays a float
      FusedConv behind Q/DQ pairs and INT8 ran *slower* than FP32 (43 ms vs 34 ms at 512x512);
      with uint8 activations all 23 convs become QLinearConv (21 ms).

    Both are Q/DQ ONNX graphs that ONNX Runtime runs and validates on CPU; the symmetric flavour is
    the exact graph the TensorRT builder compiles.
    Calibration ranges are cached under a key hashing the model, the image list and content, the
    method and the shapes, so a changed input never reuses a stale cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .data.calibration import DEFAULT_CALIB_DIR, CalibrationSet, generate_default_calibration, load_calibration
from .data.images import list_images
from .data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from .errors import FcnDeployError, require_file
from .fileio import atomic_path, ensure_writable_dir, sha256_bytes
from .meta import ModelMeta, read_onnx_meta, write_onnx_meta

PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
INT8_OP_TYPES = ["Conv", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Mul", "BatchNormalization"]
#: INT8 activation encodings (see the module docstring for why backends differ).
INT8_ENCODINGS = {
    "int8-symmetric": {"activations": "int8", "symmetric": True},
    "uint8-asymmetric": {"activations": "uint8", "symmetric": False},
}
FP16_DATA_MAX = 512.0
FP16_INIT_MAX = 65504.0


# --------------------------------------------------------------------------- FP16


def tensor_ranges(model: onnx.ModelProto, batches: list[np.ndarray], limit: int = 8) -> dict[str, float]:
    """Largest |value| of every float intermediate tensor over (up to ``limit``) calibration batches."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    typed = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type in float_types}
    outputs = [o for node in model.graph.node for o in node.output if o in typed]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in outputs:
        if name not in existing:
            probe.graph.output.add().name = name
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    peak = dict.fromkeys(names, 0.0)
    input_name = session.get_inputs()[0].name
    for batch in batches[:limit]:
        for name, value in zip(names, session.run(names, {input_name: batch})):
            if np.issubdtype(value.dtype, np.floating) and value.size:
                peak[name] = max(peak[name], float(np.nanmax(np.abs(value))))
    return peak


def convert_fp16(
    model: onnx.ModelProto,
    calibration: CalibrationSet,
    data_max: float = FP16_DATA_MAX,
    init_max: float = FP16_INIT_MAX,
) -> tuple[onnx.ModelProto, list[str]]:
    """FP16 graph with float32 I/O; returns it and the names of the nodes kept in FP32."""
    from onnxconverter_common import float16

    peaks = tensor_ranges(model, calibration.batches)
    big_inits = {
        init.name
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT
        and np.abs(onnx.numpy_helper.to_array(init)).max(initial=0.0) > init_max
    }
    keep_fp32 = [
        node.name
        for node in model.graph.node
        if any(peaks.get(o, 0.0) > data_max for o in node.output) or any(i in big_inits for i in node.input)
    ]
    with warnings.catch_warnings():  # it warns once per weight it rounds to the smallest FP16 value
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            node_block_list=keep_fp32,
            max_finite_val=init_max,
            disable_shape_infer=False,
        )
    return converted, keep_fp32


# --------------------------------------------------------------------------- INT8


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name, self.batches, self.index = input_name, batches, 0

    def get_next(self):
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {self.input_name: self.batches[self.index - 1]}

    def __len__(self) -> int:
        return len(self.batches)

    def rewind(self) -> None:
        self.index = 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def calibration_cache_key(model_bytes: bytes, calibration: CalibrationSet, method: str, encoding: str = "int8-symmetric") -> str:
    """Hash of everything the ranges depend on: model, image list and content, method, shapes
    (and the activation encoding, which changes how ranges are symmetrised)."""
    payload = json.dumps(
        {
            "model": sha256_bytes(model_bytes),
            "images": calibration.sha256,
            "method": method,
            "encoding": INT8_ENCODINGS[encoding],
            "onnxruntime": _ort_version(),
            "shapes": [list(s) for s in calibration.shapes],
            "int8_ops": INT8_OP_TYPES,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def convert_int8(
    model: onnx.ModelProto,
    calibration: CalibrationSet,
    method: str = "minmax",
    cache_dir: Path | None = None,
    encoding: str = "int8-symmetric",
) -> tuple[onnx.ModelProto, dict[str, object]]:
    """Q/DQ INT8 graph with ``encoding`` activations, calibrated on ``calibration``; returns it and a report."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    if method not in CALIB_METHODS:
        raise FcnDeployError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if encoding not in INT8_ENCODINGS:
        raise FcnDeployError(f"unknown INT8 encoding {encoding!r}; choose one of {', '.join(INT8_ENCODINGS)}")
    symmetric = INT8_ENCODINGS[encoding]["symmetric"]
    model_bytes = model.SerializeToString()
    key = calibration_cache_key(model_bytes, calibration, method, encoding)
    cache_path = None
    hit = False
    if cache_dir is not None:
        ensure_writable_dir(cache_dir)
        cache_path = Path(cache_dir) / f"calib-{encoding}-{method}-{key}.json"
        hit = cache_path.is_file()
    calib_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory(prefix="fcn-deploy-int8-") as tmp:
        src, prep, out = Path(tmp, "src.onnx"), Path(tmp, "prep.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(model_bytes)
        quant_pre_process(str(src), str(prep), skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=True)
        input_name = model.graph.input[0].name
        extra = {
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            # TensorRT's parser rejects DequantizeLinear of an int32 bias ("only activation types
            # allowed"); biases stay float, and ORT quantizes them itself when it fuses QLinearConv.
            "QuantizeBias": False,
        }
        if method == "percentile":
            extra["CalibPercentile"] = 99.999
        # A cache file is written by quantize_static itself; write it via a temp name first.
        tmp_cache = Path(tmp, "calib.json") if cache_path is not None else None
        if hit:
            tmp_cache.write_bytes(cache_path.read_bytes())  # type: ignore[union-attr]
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress lines
            quantize_static(
                str(prep),
                str(out),
                calibration_data_reader=None if hit else _Reader(input_name, calibration.batches),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=INT8_OP_TYPES,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calib_method,
                extra_options=extra,
                calibration_cache_path=str(tmp_cache) if tmp_cache else None,
            )
        if cache_path is not None and not hit and tmp_cache is not None and tmp_cache.exists():
            with atomic_path(cache_path) as final_tmp:
                final_tmp.write_bytes(tmp_cache.read_bytes())
        quantized = onnx.load(str(out))
    report = {
        "calibration_method": method, "cache_key": key, "cache_hit": hit, "cache_file": str(cache_path or ""),
        "encoding": encoding,
    }  # fmt: skip
    return quantized, report


# --------------------------------------------------------------------------- entry point


def apply_precision(
    src: str | Path,
    out: str | Path,
    precision: str,
    calib_dir: str | Path | None = None,
    calib_method: str = "minmax",
    max_hw: tuple[int, int] | None = None,
    int8_encoding: str = "int8-symmetric",
    log=print,
) -> dict[str, object]:
    """Write ``src`` (an exported FP32 ONNX) transformed to ``precision`` at ``out``.

    ``int8_encoding`` is the activation encoding of an INT8 graph, a key of :data:`INT8_ENCODINGS`
    (the compiling backend's ``int8_encoding``).

    Returns a report for the manifest: kept-FP32 nodes, calibration hash and cache state, ...
    """
    if precision not in PRECISIONS:
        raise FcnDeployError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    src = require_file(src, "ONNX model")
    model = onnx.load(str(src))
    meta = read_onnx_meta(model, str(src))
    report: dict[str, object] = {"precision": precision}
    if precision == "fp32":
        transformed = model
    else:
        folder = Path(calib_dir) if calib_dir is not None else DEFAULT_CALIB_DIR
        if calib_dir is None and not (folder.is_dir() and list_images(folder)):
            if meta.class_names != SYNTHETIC_CLASSES:
                raise FcnDeployError(
                    f"no calibration images in {folder}: pass --calib DIR with images like {meta.arch}'s real data "
                    "(the generated synthetic set only suits models trained on it)"
                )
            log(f"generating the default calibration set in {folder} (synthetic scenes, held-out seed)")
            generate_default_calibration(folder)
        calibration = load_calibration(folder, meta, max_hw=max_hw)
        report["calibration"] = {
            "folder": str(folder),
            "images": len(calibration.files),
            "skipped": len(calibration.skipped),
            "sha256": calibration.sha256,
        }
        if precision == "fp16":
            transformed, kept = convert_fp16(model, calibration)
            report["fp16"] = {"data_max": FP16_DATA_MAX, "init_max": FP16_INIT_MAX, "kept_fp32_nodes": kept}
        else:
            transformed, int8_report = convert_int8(
                model, calibration, calib_method, cache_dir=folder / ".cache", encoding=int8_encoding
            )
            report["calibration"].update(int8_report)  # type: ignore[union-attr]
            encoding = INT8_ENCODINGS[int8_encoding]
            report["int8"] = {
                "format": "QDQ",
                "encoding": int8_encoding,
                "activations": f"{encoding['activations']} {'symmetric' if encoding['symmetric'] else 'asymmetric'} per-tensor",
                "weights": "int8 symmetric per-channel",
                "quantized_ops": INT8_OP_TYPES,
                "excluded_ops": ["ConvTranspose (kept FP32: TensorRT has no per-channel deconvolution quantization)"],
            }
    extra_props = {"fcn_deploy.precision": precision}
    if precision == "int8":
        extra_props["fcn_deploy.int8_encoding"] = int8_encoding
    write_onnx_meta(transformed, meta, extra_props)
    with atomic_path(out) as tmp:
        onnx.save(transformed, str(tmp), save_as_external_data=False)
    return report


__all__ = [
    "PRECISIONS", "CALIB_METHODS", "apply_precision", "convert_fp16", "convert_int8", "load_calibration",
    "generate_default_calibration", "calibration_cache_key", "CalibrationSet",
]  # fmt: skip
