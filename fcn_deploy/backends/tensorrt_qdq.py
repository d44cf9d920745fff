"""Q/DQ nodes TensorRT's ONNX parser refuses, found in pure ONNX before the builder runs (any machine)."""

from __future__ import annotations

#: Quantized types TensorRT's ONNX parser takes in Q/DQ nodes (int4/fp4/fp8 besides int8; never uint8 or int32).
_TRT_QUANT_TYPES = {"INT8", "INT4", "FLOAT8E4M3FN", "FLOAT4E2M1"}


def qdq_problems(model) -> list[str]:
    """Q/DQ nodes of ``model`` (an ``onnx.ModelProto``) that TensorRT's ONNX parser refuses, one line each
    naming the node: a quantized type other than int8/int4/fp8/fp4 (an int32 bias Q/DQ, uint8
    activations), a non-zero zero point (TensorRT quantizes symmetrically), or per-channel scales on
    an activation (only weights may be quantized per channel).  Pure ONNX: runs on any machine."""
    import onnx
    from onnx import numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    producer = {out: node for node in model.graph.node for out in node.output}

    def type_name(tensor) -> str:
        return onnx.TensorProto.DataType.Name(tensor.data_type)

    def quantized_type(node) -> str | None:
        if node.op_type == "DequantizeLinear":
            if node.input[0] in constants:
                return type_name(constants[node.input[0]])
            source = producer.get(node.input[0])
            return quantized_type(source) if source is not None and source.op_type == "QuantizeLinear" else None
        if len(node.input) > 2 and node.input[2] in constants:
            return type_name(constants[node.input[2]])
        for attr in node.attribute:
            if attr.name == "output_dtype" and attr.i:
                return onnx.TensorProto.DataType.Name(attr.i)
        return "UINT8"  # ONNX's default for a QuantizeLinear without a zero point

    problems = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name = f"{node.op_type} node {node.name or f'#{index}'}"
        kind = quantized_type(node)
        if kind is not None and kind not in _TRT_QUANT_TYPES:
            what = "an int32 bias Q/DQ" if kind == "INT32" else f"{kind.lower()} quantization"
            problems.append(f"{name}: {what} (TensorRT quantizes to int8, int4, fp8 or fp4 only)")
        if len(node.input) > 2 and node.input[2] in constants:
            zero_point = numpy_helper.to_array(constants[node.input[2]])
            if zero_point.size and (zero_point.astype("float64") != 0).any():
                problems.append(f"{name}: non-zero zero point (TensorRT needs symmetric quantization, zero point 0)")
        data = node.input[0]
        is_weight = data in constants or (node.op_type == "DequantizeLinear" and data in producer
                                          and producer[data].op_type == "QuantizeLinear" and producer[data].input[0] in constants)  # fmt: skip
        scale = constants.get(node.input[1]) if len(node.input) > 1 else None
        if not is_weight and scale is not None and numpy_helper.to_array(scale).size > 1:
            problems.append(f"{name}: per-channel scales on an activation (TensorRT quantizes activations per tensor)")
    return problems
