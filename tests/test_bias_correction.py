"""Bias correction against an independent oracle: numpy's 1x1 convolution of the FP32 input.

A hand-made Q/DQ graph (input Q/DQ, coarse per-channel int8 weights, float bias) whose rounding shifts
each output channel's mean on positive inputs; after the correction, ONNX Runtime's run of the Q/DQ
graph has the FP32 conv's mean per channel over the calibration pixels, which numpy computes on its own.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcn_deploy.precision.bias import BiasCorrection, quantized_convs

CIN, COUT = 4, 3


def graphs(seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray, np.ndarray]:
    """The FP32 graph, its Q/DQ twin, and the FP32 weights and bias of the quantized conv.  A second
    conv reads the first's output with no Q/DQ: it is float, and its bias must not move."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(COUT, CIN, 1, 1)).astype(np.float32)
    bias = rng.normal(size=COUT).astype(np.float32)
    tail_w = rng.normal(size=(2, COUT, 1, 1)).astype(np.float32)
    tail_b = np.array([0.5, -0.25], np.float32)
    w_scale = (np.abs(weights).reshape(COUT, -1).max(axis=1) / 3).astype(np.float32)  # coarse: int values in [-3, 3]
    w_int = np.clip(np.round(weights / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, CIN, None, None])
    y = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    common = [numpy_helper.from_array(bias, "b"), numpy_helper.from_array(tail_w, "tw"), numpy_helper.from_array(tail_b, "tb")]
    fp32 = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv"), helper.make_node("Conv", ["y", "tw", "tb"], ["z"], name="tail")],
        "fp32", [x], [y], [numpy_helper.from_array(weights, "w"), *common],
    )  # fmt: skip
    qdq = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w_quantized", "ws", "wz"], ["wd"], axis=0),
            helper.make_node("Conv", ["xd", "wd", "b"], ["y"], name="conv"), helper.make_node("Conv", ["y", "tw", "tb"], ["z"], name="tail"),
        ],
        "qdq", [x], [y],
        [numpy_helper.from_array(np.float32(0.05), "xs"), numpy_helper.from_array(np.uint8(0), "xz"), numpy_helper.from_array(w_int, "w_quantized"),
         numpy_helper.from_array(w_scale, "ws"), numpy_helper.from_array(np.zeros(COUT, np.int8), "wz"), *common],
    )  # fmt: skip
    make = lambda g: helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)  # noqa: E731
    return make(fp32), make(qdq), weights, bias


def batches() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(0, 2, size=(1, CIN, 9, 13)).astype(np.float32), rng.uniform(0, 2, size=(2, CIN, 5, 7)).astype(np.float32)]


def first_conv_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    return ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def pooled_mean(arrays: list[np.ndarray]) -> np.ndarray:
    """Per channel, over every pixel of every batch."""
    return np.concatenate([a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1) for a in arrays], axis=1).astype(np.float64).mean(axis=1)


def test_the_corrected_quantized_conv_has_the_fp32_mean_per_channel():
    fp32, qdq, weights, bias = graphs()
    oracle = [np.einsum("oc,nchw->nohw", weights[:, :, 0, 0], x) + bias[None, :, None, None] for x in batches()]
    before = pooled_mean([first_conv_output(qdq, x) for x in batches()]) - pooled_mean(oracle)
    assert np.abs(before).max() > 0.05, before  # the coarse weights shift the means: something to correct

    assert BiasCorrection(fp32, batches()).apply(qdq) == 1
    after = pooled_mean([first_conv_output(qdq, x) for x in batches()]) - pooled_mean(oracle)
    assert np.abs(after).max() < 1e-4 * np.abs(before).max() + 1e-5, (before, after)
    constants = {init.name: numpy_helper.to_array(init) for init in qdq.graph.initializer}
    assert np.allclose(constants["b"], bias - before, atol=1e-5)  # the bias moved by exactly the measured shift
    assert np.array_equal(constants["tb"], [0.5, -0.25])  # the float conv is untouched


def test_only_convs_with_quantized_input_and_weights_are_corrected():
    fp32, qdq, _, _ = graphs()
    assert [c.name for c in quantized_convs(qdq, fp32)] == ["conv"]
    assert quantized_convs(fp32, fp32) == []  # a graph with no Q/DQ has nothing to correct


@pytest.mark.parametrize("seed", [0, 3])
def test_the_correction_is_the_same_bytes_every_time(seed):
    fp32, _, _, _ = graphs(seed)
    corrected = []
    for _ in range(2):
        _, qdq, _, _ = graphs(seed)
        BiasCorrection(fp32, batches()).apply(qdq)
        corrected.append(qdq.SerializeToString())
    assert corrected[0] == corrected[1]


def test_a_correction_measured_once_serves_every_later_graph():
    """The repair's trials share one measurement: the second graph is corrected without running the FP32 graph again."""
    fp32, first, _, _ = graphs()
    _, second, _, _ = graphs()
    correction = BiasCorrection(fp32, batches())
    correction.apply(first)
    correction.batches = []  # nothing left to measure with
    assert correction.apply(second) == 1
    assert first.SerializeToString() == second.SerializeToString()
