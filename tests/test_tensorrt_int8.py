"""TensorRT's INT8 graph as NVIDIA builds it: what is not quantized computes in FP16, on any machine.

The graph's validation at the product thresholds through ONNX Runtime is in tests/test_precision.py
(``int8-tensorrt``); here its types: float32 I/O, FP16 float ops and Q/DQ scales (a DQ feeds its op
with no Cast between them), the nodes whose values exceed FP16's range in FP32, the repair's float
nodes in FP16, and ONNX Runtime's own encoding left in FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fcn_deploy.backends.tensorrt import qdq_problems
from fcn_deploy.data.calibration import load_calibration
from fcn_deploy.meta import read_onnx_meta
from fcn_deploy.onnxkit import create_session
from fcn_deploy.precision import fp16
from fcn_deploy.precision.int8 import Quantizer

FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


@pytest.fixture(scope="module")
def quantized(tiny_onnx, tiny_calibration):
    """The TensorRT-target graph with a low FP16 limit (so some nodes overflow it), and ORT's graph."""
    model = onnx.load(str(tiny_onnx))
    calibration = load_calibration(tiny_calibration, read_onnx_meta(model, str(tiny_onnx)), max_hw=(96, 96))
    patch = pytest.MonkeyPatch()
    peaks = sorted(fp16.tensor_ranges(model, calibration.batches).values())
    patch.setattr(fp16, "FP16_DATA_MAX", peaks[int(len(peaks) * 0.9)])  # the top tenth of the tensors "overflow"
    try:
        with Quantizer(model, calibration, encoding="int8-symmetric") as trt:
            float_node = next(n for n in trt.quantizable_nodes() if n.startswith("Conv") or "conv" in n.lower())
            graphs = {"plain": trt.quantize(), "repaired": trt.quantize([float_node]), "report": trt.report(), "float_node": float_node}
    finally:
        patch.undo()
    with Quantizer(model, calibration, encoding="uint8-asymmetric") as ort:
        graphs["ort"] = ort.quantize()
    graphs["fp32"], graphs["batch"] = model, calibration.batches[0]
    return graphs


def test_tensorrt_int8_float_ops_are_fp16_io_float32_and_overflowing_nodes_fp32(quantized):
    graph, report = quantized["plain"], quantized["report"]
    types = elem_types(graph)
    assert report["float_ops"] == "float16" and report["kept_fp32_nodes"], report
    assert [types[i.name] for i in graph.graph.input] == [FLOAT] and {types[o.name] for o in graph.graph.output} == {FLOAT}
    kept = set(report["kept_fp32_nodes"])
    nodes = {n.name: n for n in graph.graph.node}
    assert kept <= set(nodes)
    produced_by = {o: n for n in graph.graph.node for o in n.output}
    computing = [n for n in graph.graph.node if n.op_type in ("Conv", "ConvTranspose", "Relu", "Add", "MaxPool") and n.name not in kept
                 and types.get(n.output[0]) in (FLOAT, HALF)]  # not the shape arithmetic (int64)  # fmt: skip
    assert len(computing) > 10
    for node in computing:
        assert types[node.output[0]] == HALF, (node.name, node.op_type)
    for name in kept:
        assert all(types[o] == FLOAT for o in nodes[name].output if o in types), name
    for dq in (n for n in graph.graph.node if n.op_type == "DequantizeLinear"):
        assert types[dq.input[1]] == HALF, dq.name  # FP16 scales: the DQ outputs FP16 itself
    for conv in (n for n in graph.graph.node if n.op_type == "Conv" and n.name not in kept):
        assert produced_by[conv.input[0]].op_type == "DequantizeLinear", conv.name  # no Cast between DQ and the conv
    assert qdq_problems(graph) == []


def test_repair_float_nodes_become_fp16_and_ort_encoding_stays_fp32(quantized):
    repaired, name = quantized["repaired"], quantized["float_node"]
    types = elem_types(repaired)
    node = next(n for n in repaired.graph.node if n.name == name)
    produced_by = {o: n for n in repaired.graph.node for o in n.output}
    assert produced_by.get(node.input[0]) is None or produced_by[node.input[0]].op_type != "DequantizeLinear"
    if name not in quantized["report"]["kept_fp32_nodes"]:
        assert types[node.output[0]] == HALF
    ort_types = elem_types(quantized["ort"])
    assert HALF not in ort_types.values()


def test_tensorrt_int8_graph_runs_in_onnx_runtime_close_to_fp32(quantized):
    batch = quantized["batch"]
    (fp32,) = create_session(quantized["fp32"].SerializeToString(), where="fp32").run(["logits"], {"image": batch})
    (int8,) = create_session(quantized["plain"].SerializeToString(), where="int8").run(["logits"], {"image": batch})
    assert int8.dtype == np.float32 and int8.shape == fp32.shape
    agreement = float((int8.argmax(1) == fp32.argmax(1)).mean())
    assert agreement > 0.97, agreement
