"""A toy precision for the registry test: the FP32 graph with its weights rounded to bfloat16's
mantissa (still stored as float32), so its arithmetic differs from FP32 and the limits are its own."""

from __future__ import annotations

import numpy as np
import onnx


def transform(model: onnx.ModelProto, context) -> tuple[onnx.ModelProto, dict]:
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    count = 0
    for init in rounded.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            array = onnx.numpy_helper.to_array(init).astype(np.float32)
            bits = array.view(np.uint32) & np.uint32(0xFFFF0000)  # keep sign, exponent and 7 mantissa bits
            init.CopyFrom(onnx.numpy_helper.from_array(bits.view(np.float32), init.name))
            count += 1
    return rounded, {"toy": {"rounded_initializers": count}, "props": {"fcn_deploy.toy": "bf16-weights"}}
