"""HardSwish kept whole in OpenVINO's INT8 graphs (``uint8-asymmetric-hardswish``).

ONNX Runtime's optimizer splits HardSwish into HardSigmoid and a quantized Mul; OpenVINO then runs
HardSigmoid as a reference kernel between reorders, and INT8 becomes slower than FP32 on MobileNetV3
models (README, "INT8 that repairs itself").  These tests pin the join: what it joins, what it must
leave alone, that the joined graph computes the same, and where the Q/DQ pairs end up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcn_deploy import backends
from fcn_deploy.data.calibration import CalibrationSet
from fcn_deploy.precision.int8 import INT8_ENCODINGS, Quantizer, calibration_cache_key, prepare
from fcn_deploy.precision.qdq import whole_hardswish


def _conv(name: str, x: str, y: str, cin: int, cout: int, rng) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    weight = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3, f"{name}.w")
    bias = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, f"{name}.b")
    return helper.make_node("Conv", [x, weight.name, bias.name], [y], name=name, pads=[1, 1, 1, 1]), [weight, bias]


def split_graph(alpha: float = 1 / 6, extra_reader: bool = False, opset: int = 17) -> onnx.ModelProto:
    """conv -> x * HardSigmoid(x) -> conv, the way ONNX Runtime's optimizer leaves a HardSwish."""
    rng = np.random.default_rng(0)
    conv1, init1 = _conv("conv1", "image", "x", 3, 8, rng)
    conv2, init2 = _conv("conv2", "hs", "logits", 8, 4, rng)
    nodes = [
        conv1,
        helper.make_node("HardSigmoid", ["x"], ["gate"], name="hsig", alpha=alpha, beta=0.5),
        helper.make_node("Mul", ["x", "gate"], ["hs"], name="hswish_mul"),
        conv2,
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, "h", "w"])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["gate"], ["gate_relu"], name="gate_reader"))
        outputs.append(helper.make_tensor_value_info("gate_relu", TensorProto.FLOAT, [1, 8, "h", "w"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])], outputs,
                              initializer=init1 + init2)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x})[0]


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_the_join_makes_one_hardswish_that_computes_the_same():
    split = split_graph()
    joined, count = whole_hardswish(split)
    assert count == 1
    assert ops(joined) == ["Conv", "HardSwish", "Conv"]
    assert [n.name for n in joined.graph.node if n.op_type == "HardSwish"] == ["hswish_mul"]  # the Mul's name stays
    assert ops(split) == ["Conv", "HardSigmoid", "Mul", "Conv"]  # the input graph is not edited
    x = np.random.default_rng(1).standard_normal((1, 3, 19, 23)).astype(np.float32) * 3
    np.testing.assert_allclose(run(joined, x), run(split, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "graph, why",
    [
        (split_graph(alpha=0.2), "HardSigmoid with ONNX's default alpha 0.2 is not HardSwish's 1/6"),
        (split_graph(extra_reader=True), "the gate has a second reader, which still needs it"),
        (split_graph(opset=13), "opset 13 has no HardSwish"),
    ],
)
def test_the_join_leaves_what_is_not_a_hardswish(graph, why):
    joined, count = whole_hardswish(graph)
    assert count == 0 and ops(joined) == ops(graph), why


def _calibration(tmp_path: Path) -> CalibrationSet:
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((1, 3, 24, 24)).astype(np.float32) for _ in range(4)]
    return CalibrationSet(folder=tmp_path, files=[tmp_path / f"{i}.png" for i in range(4)], batches=batches, sha256="test")


def _reader_of(model: onnx.ModelProto, op_type: str) -> list[str]:
    """The op types producing the inputs of each ``op_type`` node."""
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    return [producer.get(name, "input") for node in model.graph.node if node.op_type == op_type for name in node.input[:1]]


def test_openvino_int8_graph_keeps_hardswish_whole_and_unquantized(tmp_path):
    assert backends.get("openvino").int8_encoding == "uint8-asymmetric-hardswish"
    assert backends.get("onnxruntime").int8_encoding == "uint8-asymmetric"  # its QLinearConv needs the Mul's Q
    source = split_graph()
    with Quantizer(source, _calibration(tmp_path), encoding="uint8-asymmetric-hardswish") as quantizer:
        whole = quantizer.quantize()
    with Quantizer(source, _calibration(tmp_path), encoding="uint8-asymmetric") as quantizer:
        split = quantizer.quantize()
    assert "HardSigmoid" not in ops(whole) and ops(whole).count("HardSwish") == 1
    assert _reader_of(whole, "HardSwish") == ["Conv"]  # reads the conv's float output: no Q/DQ inside the activation
    assert _reader_of(whole, "Conv")[1] == "DequantizeLinear"  # the conv after it still reads int8
    assert "HardSigmoid" in ops(split)
    assert "DequantizeLinear" in [p for p in _reader_of(split, "Mul")]  # the split one quantizes the Mul
    x = np.random.default_rng(3).standard_normal((1, 3, 24, 24)).astype(np.float32)
    ref = run(source, x)
    for graph in (whole, split):  # both still compute the float graph closely
        assert np.abs(run(graph, x) - ref).max() < 0.1 * np.abs(ref).max()


def test_the_encoding_is_part_of_the_prepared_graph_and_the_cache_key(tmp_path):
    source = split_graph()
    assert "HardSwish" in ops(prepare(source, tmp_path / "a.onnx", "uint8-asymmetric-hardswish"))
    assert "HardSwish" not in ops(prepare(source, tmp_path / "b.onnx", "uint8-asymmetric"))
    assert INT8_ENCODINGS["uint8-asymmetric-hardswish"]["hardswish"] == "whole"
    calibration = _calibration(tmp_path)
    data = source.SerializeToString()
    assert calibration_cache_key(data, calibration, "minmax", "uint8-asymmetric") != calibration_cache_key(
        data, calibration, "minmax", "uint8-asymmetric-hardswish"
    )
