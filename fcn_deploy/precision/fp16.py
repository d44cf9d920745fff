"""FP16 as ModelOpt AutoCast does it.

A reference FP32 run on calibration images records the largest magnitude of every intermediate
tensor.  Nodes whose outputs exceed ``data_max`` (512) or whose initialisers exceed ``init_max``
(65504, the FP16 maximum) stay FP32; everything else is FP16.  The model's I/O stays **float32**
(``keep_io_types``): the first node casts the image to FP16 and the logits are cast back, so every
precision is fed by the same preprocessing.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx

from ..data.calibration import CalibrationSet
from ..onnxkit import create_session
from .context import TransformContext

FP16_DATA_MAX = 512.0
FP16_INIT_MAX = 65504.0


def tensor_ranges(model: onnx.ModelProto, batches: list[np.ndarray], limit: int = 8) -> dict[str, float]:
    """Largest |value| of every float intermediate tensor over (up to ``limit``) calibration batches."""
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
    session = create_session(probe.SerializeToString(), where="the FP32 model with every tensor as an output", optimization="disabled")
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

    keep_fp32 = overflowing_nodes(model, calibration, data_max, init_max)
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


def overflowing_nodes(model: onnx.ModelProto, calibration: CalibrationSet, data_max: float = FP16_DATA_MAX,
                      init_max: float = FP16_INIT_MAX) -> list[str]:  # fmt: skip
    """The nodes that must stay FP32: an output beyond ``data_max`` on the calibration images, or a
    weight beyond ``init_max`` (the same rule keeps the TensorRT INT8 graph's float parts safe in FP16)."""
    peaks = tensor_ranges(model, calibration.batches)
    big_inits = {
        init.name
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and np.abs(onnx.numpy_helper.to_array(init)).max(initial=0.0) > init_max
    }
    return [
        node.name
        for node in model.graph.node
        if any(peaks.get(o, 0.0) > data_max for o in node.output) or any(i in big_inits for i in node.input)
    ]


def transform(model: onnx.ModelProto, context: TransformContext) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The FP16 precision's transform (see :mod:`fcn_deploy.precisions`)."""
    assert context.calibration is not None, "FP16 needs calibration images"
    converted, kept = convert_fp16(model, context.calibration)
    return converted, {"fp16": {"data_max": FP16_DATA_MAX, "init_max": FP16_INIT_MAX, "kept_fp32_nodes": kept}}
