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
    BatchNormalization (what ModelOpt quantizes for TensorRT).  Q/DQ pairs go on the **inputs** of
    those ops only, never on their outputs (ModelOpt's placement): a tensor is rounded to int8 only
    where an int8 kernel reads it, so the score maps feeding the upsampling stay float.

    **ConvTranspose is excluded** (stays FP32).  TensorRT can quantize deconvolutions (ModelOpt does,
    per channel on axis 1), but measured on the default and the test model, quantizing the bilinear
    upsampling lowered pooled agreement in every variant (README, "INT8"), and it is a small share of
    the compute.

    The activation encoding is the one the compiling backend runs best (``INT8_ENCODINGS``; each
    backend declares its own, see :mod:`fcn_deploy.backends`):

    * ``int8-symmetric``: symmetric **int8** activations, zero points 0, as TensorRT requires.  The
      input of a residual Add that comes from the conv TensorRT fuses the Add into (the longer path
      back to the common ancestor, ModelOpt's rule) has no Q/DQ, so the conv and the Add become one
      kernel and the sum is rounded once;
    * ``uint8-asymmetric``: asymmetric **uint8** activations, ONNX Runtime's recommendation for
      x86.  Measured here: with symmetric int8 activations ORT cannot fold a ReLU into the
      quantized conv (zero point 0 cannot express max(0, x)), so every Conv+ReLU stays a float
      FusedConv behind Q/DQ pairs and INT8 ran *slower* than FP32 (43 ms vs 34 ms at 512x512);
      with uint8 activations all 23 convs become QLinearConv (21 ms).  Every Add input stays
      quantized: ORT fuses a conv into QLinearConv only when a Q follows it.

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
from pathlib import Path

import numpy as np
import onnx

from .data.calibration import DEFAULT_CALIB_DIR, MIN_CALIB_IMAGES, CalibrationSet, generate_default_calibration, load_calibration
from .data.images import list_images
from .data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from .errors import FcnDeployError, require_file
from .fileio import atomic_path, ensure_writable_dir, sha256_bytes
from .meta import read_onnx_meta, write_onnx_meta

PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
INT8_OP_TYPES = ["Conv", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Mul", "BatchNormalization"]
#: INT8 activation encodings (see the module docstring for why backends differ).
INT8_ENCODINGS = {
    "int8-symmetric": {"activations": "int8", "symmetric": True, "residual_add_input": "float"},
    "uint8-asymmetric": {"activations": "uint8", "symmetric": False, "residual_add_input": "quantized"},
}
#: Where Q/DQ pairs go (part of the calibration cache key and the manifest).
INT8_PLACEMENT = "inputs of quantized ops only (ModelOpt)"
#: Ops a residual Add's conv branch may pass through on its way to the Add (TensorRT still fuses them).
_FUSIBLE_PATH_OPS = {"Relu", "BatchNormalization", "MaxPool", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity"}
#: Fewest calibration images per method: the histogram methods estimate the tails of every tensor's
#: distribution (percentile clips the top 0.001 %, entropy fits where to clip), which a handful of
#: images does not sample; minmax needs only the extremes (calibration/README.md).
MIN_IMAGES_PER_METHOD = {"minmax": MIN_CALIB_IMAGES, "entropy": 32, "percentile": 32}
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


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every node named (``<op>_<index>`` where it had no name): Q/DQ placement names nodes."""
    if all(node.name for node in model.graph.node):
        return model
    named = onnx.ModelProto()
    named.CopyFrom(model)
    taken = {node.name for node in named.graph.node}
    for index, node in enumerate(named.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return named


def residual_add_inputs(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """``(Add node name, input index)`` of every Add input that TensorRT fuses into its producing conv.

    ModelOpt's rule: of an Add's two inputs, the one whose producer is a conv (possibly behind
    ReLU, BatchNorm, pooling or copy ops) and lies on the longer path back to the inputs' lowest
    common ancestor is the conv's output, and the other is the residual.  With both inputs from the
    same conv, or the conv being that ancestor itself, nothing fuses.
    """
    nodes = list(model.graph.node)
    producer = {out: index for index, node in enumerate(nodes) for out in node.output}
    constants = {i.name for i in model.graph.initializer} | {out for node in nodes if node.op_type == "Constant" for out in node.output}

    def backbone(tensor: str) -> int | None:
        index = producer.get(tensor)
        while index is not None and nodes[index].op_type not in ("Conv", "ConvTranspose"):
            if nodes[index].op_type not in _FUSIBLE_PATH_OPS:
                return None
            index = producer.get(nodes[index].input[0])
        return index

    def ancestors(tensor: str) -> dict[int, int]:
        """Nodes upstream of ``tensor`` (by index) with their distance in nodes."""
        distance: dict[int, int] = {}
        frontier, depth = [tensor], 0
        while frontier:
            depth += 1
            upstream = []
            for name in frontier:
                index = producer.get(name)
                if index is None or index in distance:
                    continue
                distance[index] = depth
                upstream += [i for i in nodes[index].input if i and i not in constants]
            frontier = upstream
        return distance

    fused = []
    for node in nodes:
        if node.op_type != "Add" or len(node.input) != 2 or any(i in constants or i not in producer for i in node.input):
            continue
        convs = [backbone(i) for i in node.input]
        if convs == [None, None] or convs[0] == convs[1]:
            continue
        up = [ancestors(i) for i in node.input]
        common = set(up[0]) & set(up[1])
        if not common:
            continue
        lca = min(common, key=lambda n: up[0][n] + up[1][n])
        if None not in convs:
            fused.append((node.name, 0 if up[0][lca] > up[1][lca] else 1))
        else:
            index = 0 if convs[0] is not None else 1
            if convs[index] != lca:
                fused.append((node.name, index))
    return fused


def drop_input_qdq(model: onnx.ModelProto, inputs: list[tuple[str, int]]) -> int:
    """Feed each ``(node name, input index)`` its float tensor instead of the Q/DQ'd copy, then drop
    Q/DQ nodes nothing reads any more; returns how many inputs were rewired."""
    nodes = {node.name: node for node in model.graph.node}
    producer = {out: node for node in model.graph.node for out in node.output}
    rewired = 0
    for name, index in inputs:
        node = nodes.get(name)
        dq = producer.get(node.input[index]) if node is not None else None
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        node.input[index] = q.input[0]
        rewired += 1
    while True:
        read = {i for node in model.graph.node for i in node.input} | {o.name for o in model.graph.output}
        unused = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not set(n.output) & read]
        if not unused:
            break
        for node in unused:
            model.graph.node.remove(node)
    read = {i for node in model.graph.node for i in node.input}
    for init in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(init)
    return rewired


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
            "placement": INT8_PLACEMENT,
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
    model = name_nodes(model)
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
            # ModelOpt's placement: Q/DQ on the inputs of quantized ops, none on their outputs.
            "OpTypesToExcludeOutputQuantization": INT8_OP_TYPES,
            "ForceQuantizeNoInputCheck": True,  # MaxPool reads int8 even when its producer is float
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
        unquantized = []
        if INT8_ENCODINGS[encoding]["residual_add_input"] == "float":
            unquantized = residual_add_inputs(onnx.load(str(prep)))
            drop_input_qdq(quantized, unquantized)
    report = {
        "calibration_method": method, "cache_key": key, "cache_hit": hit, "cache_file": str(cache_path or ""),
        "encoding": encoding, "residual_add_inputs_float": [f"{name}:{index}" for name, index in unquantized],
    }  # fmt: skip
    return quantized, report


# --------------------------------------------------------------------------- entry point


@contextlib.contextmanager
def _transform_errors(src: Path, precision: str):
    """A failure inside ONNX's or ONNX Runtime's transforms (a graph they do not support, often a
    foreign one) becomes one line naming the model, not a traceback."""
    try:
        yield
    except FcnDeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx / onnxruntime / onnxconverter-common raise many kinds
        detail = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise FcnDeployError(
            f"{src}: the {precision} transform failed ({exc.__class__.__name__}: {detail}); build FP32 instead, or "
            "simplify the graph (fcn-deploy export --simplify, or onnxslim) and try again"
        ) from exc


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
    if precision == "int8" and calib_method not in CALIB_METHODS:
        raise FcnDeployError(f"unknown calibration method {calib_method!r}; choose one of {', '.join(CALIB_METHODS)}")
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
        need = MIN_IMAGES_PER_METHOD.get(calib_method, MIN_CALIB_IMAGES) if precision == "int8" else MIN_CALIB_IMAGES
        if len(calibration.files) < need:
            raise FcnDeployError(
                f"calibration folder {folder} has {len(calibration.files)} usable images, and --calib-method {calib_method} "
                f"needs at least {need} (it estimates each tensor's tails); add images or use --calib-method minmax "
                "(see calibration/README.md)"
            )
        report["calibration"] = {
            "folder": str(folder),
            "images": len(calibration.files),
            "skipped": len(calibration.skipped),
            "sha256": calibration.sha256,
        }
        with _transform_errors(src, precision):
            if precision == "fp16":
                transformed, kept = convert_fp16(model, calibration)
            else:
                transformed, int8_report = convert_int8(
                    model, calibration, calib_method, cache_dir=folder / ".cache", encoding=int8_encoding
                )
        if precision == "fp16":
            report["fp16"] = {"data_max": FP16_DATA_MAX, "init_max": FP16_INIT_MAX, "kept_fp32_nodes": kept}
        else:
            report["calibration"].update(int8_report)  # type: ignore[union-attr]
            encoding = INT8_ENCODINGS[int8_encoding]
            report["int8"] = {
                "format": "QDQ",
                "encoding": int8_encoding,
                "activations": f"{encoding['activations']} {'symmetric' if encoding['symmetric'] else 'asymmetric'} per-tensor",
                "weights": "int8 symmetric per-channel",
                "quantized_ops": INT8_OP_TYPES,
                "placement": INT8_PLACEMENT,
                "residual_add_input": encoding["residual_add_input"],
                "excluded_ops": ["ConvTranspose (kept FP32: quantizing the bilinear upsampling lowered agreement; README)"],
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
