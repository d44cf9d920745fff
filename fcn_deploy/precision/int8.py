"""INT8 as explicit quantization: Q/DQ ONNX graphs from post-training calibration.

``quant_pre_process`` then ``quantize_static`` in QDQ format, per-channel symmetric int8 weights,
float biases (TensorRT cannot parse int32 bias Q/DQ; ONNX Runtime quantizes biases itself when it
fuses).  Quantized ops: Conv, Add, MaxPool, AveragePool, GlobalAveragePool, Mul, BatchNormalization
(what ModelOpt quantizes for TensorRT).  Q/DQ pairs go on the **inputs** of those ops only, never on
their outputs (ModelOpt's placement): a tensor is rounded to int8 only where an int8 kernel reads
it, so the score maps feeding the upsampling stay float.

**ConvTranspose is excluded** (stays float): quantizing the bilinear upsampling lowered pooled
agreement in every variant measured (README, "INT8"), and it is a small share of the compute.

The activation encoding is the one the compiling backend runs best (:data:`INT8_ENCODINGS`; each
backend declares its own ``int8_encoding``):

* ``int8-symmetric``: symmetric **int8** activations, zero points 0, as TensorRT requires.  The
  input of a residual Add that comes from the conv TensorRT fuses the Add into (the longer path back
  to the common ancestor, ModelOpt's rule) has no Q/DQ, so the conv and the Add become one kernel
  and the sum is rounded once;
* ``uint8-asymmetric``: asymmetric **uint8** activations, ONNX Runtime's recommendation for x86:
  with symmetric int8 ORT cannot fold a ReLU into its quantized conv (zero point 0 cannot express
  max(0, x)), and INT8 ran slower than FP32 (README).  Every Add input stays quantized: ORT fuses a
  conv into QLinearConv only when a Q follows it;
* ``uint8-asymmetric-hardswish``: the same, for OpenVINO, with HardSwish whole and float
  (:func:`.qdq.whole_hardswish`): ONNX Runtime's optimizer splits it into HardSigmoid and a quantized
  Mul, which OpenVINO runs as a reference kernel between reorders (README, "INT8 that repairs
  itself").  ONNX Runtime keeps the split: its QLinearConv needs the Q that the quantized Mul puts
  after the conv.

Nodes named in ``float_nodes`` (the INT8 repair's choice, or the user's) keep float weights and
read float inputs.

What is not quantized computes in the encoding's ``float_ops`` type.  For TensorRT that is **FP16**,
as NVIDIA builds INT8 (ModelOpt's ``high_precision_dtype='fp16'``): a strongly typed engine runs an
op in the type its graph gives it, so FP32 float parts would run in plain FP32 (TF32 is off) inside
an INT8 engine whose FP16 sibling runs them in FP16.  The Q/DQ scales become FP16 too, so every DQ
feeds its op directly (TensorRT fuses them).  The I/O stays float32, and the nodes whose values
exceed FP16's range stay FP32, by the FP16 transform's rule (:func:`.fp16.overflowing_nodes`);
float nodes chosen by the repair become FP16 like the rest.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..data.calibration import MIN_CALIB_IMAGES, CalibrationSet
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..onnxkit.graph import name_nodes
from . import cache, fp16
from .bias import BIAS_CORRECTION, BiasCorrection
from .context import TransformContext
from .qdq import drop_input_qdq, float_ops_in_fp16, quantized_inputs, residual_add_inputs, whole_hardswish

CALIB_METHODS = ("minmax", "entropy", "percentile")
INT8_OP_TYPES = ["Conv", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Mul", "BatchNormalization"]
#: INT8 activation encodings (see the module docstring for why backends differ).
INT8_ENCODINGS = {
    "int8-symmetric": {
        "activations": "int8",
        "symmetric": True,
        "residual_add_input": "float",
        "hardswish": "split",
        "float_ops": "float16",
    },
    "uint8-asymmetric": {
        "activations": "uint8",
        "symmetric": False,
        "residual_add_input": "quantized",
        "hardswish": "split",
        "float_ops": "float32",
    },
    "uint8-asymmetric-hardswish": {
        "activations": "uint8",
        "symmetric": False,
        "residual_add_input": "quantized",
        "hardswish": "whole",
        "float_ops": "float32",
    },
}
#: Encoding fields that change the measured ranges (the calibration cache key): not ``float_ops``,
#: which is applied after the ranges are measured on the FP32 graph.
_RANGE_FIELDS = ("activations", "symmetric", "residual_add_input", "hardswish")
#: Where Q/DQ pairs go (part of the calibration cache key and the manifest).
INT8_PLACEMENT = "inputs of quantized ops only (ModelOpt)"
#: Fewest calibration images per method: the histogram methods estimate the tails of every tensor's
#: distribution (percentile clips the top 0.001 %, entropy fits where to clip), which a handful of
#: images does not sample; minmax needs only the extremes (calibration/README.md).
MIN_IMAGES_PER_METHOD = {"minmax": MIN_CALIB_IMAGES, "entropy": 32, "percentile": 32}


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


def check_method(method: str, encoding: str) -> None:
    if method not in CALIB_METHODS:
        raise FcnDeployError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}", options=("calib_method",))
    if encoding not in INT8_ENCODINGS:
        raise FcnDeployError(f"unknown INT8 encoding {encoding!r}; choose one of {', '.join(INT8_ENCODINGS)}", options=("int8_target",))


def require_images(calibration: CalibrationSet, method: str) -> None:
    """A one-line error when the calibration set is too small for ``method``."""
    need = MIN_IMAGES_PER_METHOD.get(method, MIN_CALIB_IMAGES)
    if len(calibration.files) < need:
        raise FcnDeployError(
            f"calibration folder {calibration.folder} has {len(calibration.files)} usable images, and calibration method "
            f"{method} needs at least {need} (it estimates each tensor's tails); add images or use minmax "
            "(see calibration/README.md)", options=("calib_method", "calib_dir"),
        )  # fmt: skip


def calibration_cache_key(model_bytes: bytes, calibration: CalibrationSet, method: str, encoding: str = "int8-symmetric") -> str:
    fields = {k: v for k, v in INT8_ENCODINGS[encoding].items() if k in _RANGE_FIELDS}
    return cache.calibration_cache_key(model_bytes, calibration, method, fields, INT8_OP_TYPES, INT8_PLACEMENT)


def prepare(model: onnx.ModelProto, out: Path, encoding: str = "int8-symmetric") -> onnx.ModelProto:
    """The FP32 graph as quantization sees it (every node named, then ONNX Runtime's ``quant_pre_process``;
    HardSwish made whole again where ``encoding`` says so), written to ``out``: the INT8 graph's node and
    tensor names are this graph's."""
    from onnxruntime.quantization import quant_pre_process

    source = out.with_name(out.stem + ".src.onnx")
    source.write_bytes(name_nodes(model).SerializeToString())
    quant_pre_process(str(source), str(out), skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=True)
    source.unlink()
    # ONNX Runtime's optimizer adds nodes of its own without names (HardSwish becomes HardSigmoid + Mul,
    # and Mul is quantized): name them too, or the repair could not keep them in float.
    prepared = onnx.load(str(out))
    named = name_nodes(prepared)
    joined = 0
    if INT8_ENCODINGS[encoding]["hardswish"] == "whole":
        named, joined = whole_hardswish(named)
    if named is not prepared or joined:
        out.write_bytes(named.SerializeToString())
    return named


class Quantizer:
    """One model's INT8 quantization, prepared once: ``quant_pre_process`` runs once and the activation
    ranges are measured once (or read from the cache), so each :meth:`quantize` call (one per INT8
    repair trial) only places the Q/DQ nodes."""

    def __init__(self, model: onnx.ModelProto, calibration: CalibrationSet, method: str = "minmax", cache_dir: Path | None = None,
                 encoding: str = "int8-symmetric", listener: Listener = SILENT):  # fmt: skip
        check_method(method, encoding)
        self.method, self.encoding, self.listener = method, encoding, listener
        self.calibration = calibration
        model = name_nodes(model)
        model_bytes = model.SerializeToString()
        self.key = calibration_cache_key(model_bytes, calibration, method, encoding)
        self.cache_path = cache.cache_file(cache_dir, encoding, method, self.key) if cache_dir is not None else None
        self.cache_hit, why = cache.readable_cache(self.cache_path)
        if self.cache_path is not None and self.cache_path.is_file() and not self.cache_hit:
            listener.note(f"calibration cache {self.cache_path.name} is unusable ({why}): measuring the ranges again", level="warning")
        self._tmp = tempfile.TemporaryDirectory(prefix="fcn-deploy-int8-")
        tmp = Path(self._tmp.name)
        self.prep = tmp / "prep.onnx"
        self.prepared = prepare(model, self.prep, encoding)
        self.node_names = {node.name for node in self.prepared.graph.node}
        self.ranges = tmp / "calib.json"  # ONNX Runtime's range cache, for every quantize() after the first
        if self.cache_hit:
            self.ranges.write_bytes(self.cache_path.read_bytes())  # type: ignore[union-attr]
        self.residual = residual_add_inputs(self.prepared) if INT8_ENCODINGS[encoding]["residual_add_input"] == "float" else []
        self.float_ops = str(INT8_ENCODINGS[encoding]["float_ops"])
        #: Nodes whose values exceed FP16's range, kept FP32 when the float ops are FP16.
        self.kept_fp32 = fp16.overflowing_nodes(self.prepared, calibration, fp16.FP16_DATA_MAX) if self.float_ops == "float16" else []
        self._bias: BiasCorrection | None = None  # measured on first use, shared by every quantize()
        self.corrected_convs = 0

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> Quantizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def quantizable_nodes(self) -> list[str]:
        """The nodes of the prepared graph whose op type is quantized (candidates to keep in float)."""
        return [node.name for node in self.prepared.graph.node if node.op_type in INT8_OP_TYPES]

    def quantize(self, float_nodes: tuple[str, ...] | list[str] = (), bias_correction: bool = False) -> onnx.ModelProto:
        """The Q/DQ graph with ``float_nodes`` kept in float (float weights, float inputs), and with
        each quantized conv's bias corrected (:mod:`.bias`) when ``bias_correction``."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        unknown = sorted(set(float_nodes) - self.node_names)
        if unknown:
            raise FcnDeployError(f"float node(s) {', '.join(unknown)} are not in the graph; name them as `fcn-deploy debug precision` "
                                 "lists them", options=("float_nodes",))  # fmt: skip
        symmetric = INT8_ENCODINGS[self.encoding]["symmetric"]
        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
        extra = {
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            # TensorRT's parser rejects DequantizeLinear of an int32 bias ("only activation types
            # allowed"); biases stay float, and ORT quantizes them itself when it fuses QLinearConv.
            "QuantizeBias": False,
            # ModelOpt's placement: Q/DQ on the inputs of quantized ops, none on their outputs.
            "OpTypesToExcludeOutputQuantization": INT8_OP_TYPES,
            "ForceQuantizeNoInputCheck": True,  # MaxPool reads int8 even when its producer is float
        }
        if self.method == "percentile":
            extra["CalibPercentile"] = 99.999
        measured = self.ranges.is_file()
        out = Path(self._tmp.name) / "int8.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress lines
            quantize_static(
                str(self.prep), str(out), calibration_data_reader=None if measured else _Reader(self.prepared.graph.input[0].name, self.calibration.batches),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=INT8_OP_TYPES, per_channel=True, reduce_range=False,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=calibrate[self.method], extra_options=extra, nodes_to_exclude=list(float_nodes),
                calibration_cache_path=str(self.ranges),
            )  # fmt: skip
        if self.cache_path is not None and not self.cache_hit and self.ranges.is_file():
            cache.store(self.cache_path, self.ranges.read_bytes())
        quantized = onnx.load(str(out))
        drop_input_qdq(quantized, self.residual)
        if float_nodes:  # an excluded node may still read a tensor another consumer quantizes: give it the float one
            drop_input_qdq(quantized, [pair for name in float_nodes for pair in quantized_inputs(quantized, name)])
        if bias_correction:
            if self._bias is None:
                self._bias = BiasCorrection(self.prepared, self.calibration.batches)
            self.corrected_convs = self._bias.apply(quantized)
        if self.float_ops == "float16":
            quantized = float_ops_in_fp16(quantized, self.kept_fp32)
        return quantized

    def report(self) -> dict[str, object]:
        return {
            "calibration_method": self.method, "cache_key": self.key, "cache_hit": self.cache_hit, "cache_file": str(self.cache_path or ""),
            "encoding": self.encoding, "residual_add_inputs_float": [f"{name}:{index}" for name, index in self.residual],
            "float_ops": self.float_ops, "kept_fp32_nodes": list(self.kept_fp32),
        }  # fmt: skip


def convert_int8(
    model: onnx.ModelProto,
    calibration: CalibrationSet,
    method: str = "minmax",
    cache_dir: Path | None = None,
    encoding: str = "int8-symmetric",
    float_nodes: tuple[str, ...] | list[str] = (),
    listener: Listener = SILENT,
    bias_correction: bool = False,
) -> tuple[onnx.ModelProto, dict[str, object]]:
    """Q/DQ INT8 graph with ``encoding`` activations, calibrated on ``calibration``; returns it and a report.
    ``float_nodes`` keep float weights and read float inputs."""
    with Quantizer(model, calibration, method, cache_dir, encoding, listener) as quantizer:
        return quantizer.quantize(float_nodes, bias_correction), quantizer.report()


def transform(model: onnx.ModelProto, context: TransformContext) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The INT8 precision's transform (see :mod:`fcn_deploy.precisions`)."""
    calibration = context.calibration
    assert calibration is not None, "INT8 needs calibration images"
    check_method(context.calib_method, context.encoding)
    require_images(calibration, context.calib_method)
    quantized, details = convert_int8(
        model, calibration, context.calib_method, cache_dir=context.cache_dir, encoding=context.encoding,
        float_nodes=context.float_nodes, listener=context.listener, bias_correction=context.bias_correction,
    )  # fmt: skip
    return quantized, {
        "calibration": details,
        "props": {"fcn_deploy.int8_encoding": context.encoding},
        "int8": int8_details(context.encoding, context.float_nodes, context.bias_correction),
    }


def int8_details(encoding_name: str, float_nodes: tuple[str, ...] | list[str], bias_correction: bool = False) -> dict[str, object]:
    """What the manifest records about an INT8 graph's quantization."""
    encoding = INT8_ENCODINGS[encoding_name]
    return {
        "format": "QDQ",
        "encoding": encoding_name,
        "activations": f"{encoding['activations']} {'symmetric' if encoding['symmetric'] else 'asymmetric'} per-tensor",
        "weights": "int8 symmetric per-channel",
        "quantized_ops": INT8_OP_TYPES,
        "placement": INT8_PLACEMENT,
        "residual_add_input": encoding["residual_add_input"],
        "hardswish": encoding["hardswish"],
        "excluded_ops": ["ConvTranspose (kept float: quantizing the bilinear upsampling lowered agreement; README)"],
        "float_nodes": list(float_nodes),
        "bias_correction": BIAS_CORRECTION if bias_correction else "none",
        "float_ops": encoding["float_ops"]
        if encoding["float_ops"] != "float16"
        else "float16 (FP32 where values exceed FP16 range; I/O float32)",
    }
