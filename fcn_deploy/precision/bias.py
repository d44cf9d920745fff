"""Bias correction: each quantized conv's mean output error, measured on the calibration images, folded into its bias.

Rounding a conv's input and weights to int8 shifts the mean of each output channel a little; through
a deep net the shifts add up, and a mask that agrees on 99 % of the pixels can still lose a class's
thin borders (mean IU).  NNCF's fast bias correction removes that shift at no cost at run time: for
every conv whose input and weights are quantized, run the conv on its **FP32** input (from the FP32
graph, on the calibration images) once as FP32 and once through its own Q/DQ, and add the mean
difference per output channel to the bias.  The engine is as fast as the plain one; only the bias
values change.

Each conv's correction depends on that conv alone (its FP32 input, its input scale and zero point,
its weights), so it is measured once per build and reused by every trial of the INT8 repair, whatever
other nodes are kept in float.  The sums are taken in float64 from single-threaded sessions, so a
rebuild gives the same graph byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: What the manifest says the correction is.
BIAS_CORRECTION = (
    "per output channel: the mean error of each quantized conv on the calibration images, added to its bias (NNCF's fast bias correction)"
)


@dataclass(frozen=True)
class _QuantizedConv:
    """A conv of the Q/DQ graph whose input and weights are both quantized."""

    name: str
    fp32_input: str
    scale: np.ndarray
    zero_point: np.ndarray
    weights: np.ndarray  # dequantized, as the engine computes with them
    bias: str  # the bias initializer's name in the Q/DQ graph


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1  # the same sums on every machine
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def quantized_convs(quantized: onnx.ModelProto, prepared: onnx.ModelProto) -> list[_QuantizedConv]:
    """The convs of ``quantized`` that read a Q/DQ input and Q/DQ weights and have a float bias."""
    constants = {init.name: init for init in quantized.graph.initializer}
    producer = {out: node for node in quantized.graph.node for out in node.output}
    fp32_tensors = {name for node in prepared.graph.node for name in node.output} | {i.name for i in prepared.graph.input}
    found = []
    for node in quantized.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or node.input[2] not in constants:
            continue
        dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        q_x = producer.get(dq_x.input[0])
        if q_x is None or q_x.op_type != "QuantizeLinear" or q_x.input[0] not in fp32_tensors or dq_w.input[0] not in constants:
            continue
        w_int = numpy_helper.to_array(constants[dq_w.input[0]]).astype(np.float32)
        w_scale = numpy_helper.to_array(constants[dq_w.input[1]]).astype(np.float32)
        w_zero = numpy_helper.to_array(constants[dq_w.input[2]]).astype(np.float32) if len(dq_w.input) > 2 else np.float32(0)
        axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
        shape = [1] * w_int.ndim
        shape[axis] = -1
        weights = (w_int - np.reshape(w_zero, shape if w_zero.ndim else [1])) * np.reshape(w_scale, shape if w_scale.ndim else [1])
        found.append(_QuantizedConv(
            node.name, q_x.input[0], numpy_helper.to_array(constants[q_x.input[1]]), numpy_helper.to_array(constants[q_x.input[2]]),
            weights.astype(np.float32), node.input[2],
        ))  # fmt: skip
    return found


def _error_graph(conv: onnx.NodeProto, item: _QuantizedConv, fp32_weights: np.ndarray) -> onnx.ModelProto:
    """One conv run twice on the same FP32 input, as FP32 and through its Q/DQ: the difference."""
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"]),
        helper.make_node("Conv", ["x", "w_fp32"], ["y_fp32"], **attrs),
        helper.make_node("Conv", ["xd", "w_int8"], ["y_int8"], **attrs),
        helper.make_node("Sub", ["y_fp32", "y_int8"], ["error"]),
    ]
    inits = [numpy_helper.from_array(np.asarray(item.scale), "scale"), numpy_helper.from_array(np.asarray(item.zero_point), "zero"),
             numpy_helper.from_array(fp32_weights.astype(np.float32), "w_fp32"), numpy_helper.from_array(item.weights, "w_int8")]  # fmt: skip
    graph = helper.make_graph(nodes, f"error_{conv.name}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("error", TensorProto.FLOAT, None)], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


class BiasCorrection:
    """The corrections of one prepared FP32 graph on one calibration set, measured on first use."""

    def __init__(self, prepared: onnx.ModelProto, batches: list[np.ndarray]):
        self.prepared, self.batches = prepared, batches
        self.deltas: dict[str, np.ndarray] = {}

    def _measure(self, convs: list[_QuantizedConv]) -> None:
        todo = [c for c in convs if c.name not in self.deltas]
        if not todo:
            return
        fp32_nodes = {node.name: node for node in self.prepared.graph.node}
        fp32_constants = {init.name: init for init in self.prepared.graph.initializer}
        probe = onnx.ModelProto()
        probe.CopyFrom(self.prepared)
        outputs = list(dict.fromkeys(c.fp32_input for c in todo))
        present = {o.name for o in probe.graph.output}
        probe.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs if name not in present)
        fp32 = _session(probe)
        errors = {c.name: _session(_error_graph(fp32_nodes[c.name], c, numpy_helper.to_array(fp32_constants[fp32_nodes[c.name].input[1]])))
                  for c in todo}  # fmt: skip
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        input_name = probe.graph.input[0].name
        for batch in self.batches:
            values = dict(zip(outputs, fp32.run(outputs, {input_name: batch})))
            for conv in todo:
                error = errors[conv.name].run(["error"], {"x": values[conv.fp32_input]})[0].astype(np.float64)
                sums[conv.name] = sums.get(conv.name, 0.0) + error.sum(axis=(0, 2, 3))
                counts[conv.name] = counts.get(conv.name, 0) + error.shape[0] * error.shape[2] * error.shape[3]
        for conv in todo:
            self.deltas[conv.name] = (sums[conv.name] / counts[conv.name]).astype(np.float32)

    def apply(self, quantized: onnx.ModelProto) -> int:
        """Fold the corrections into ``quantized``'s biases, in place; returns how many convs were corrected."""
        fp32_nodes = {node.name for node in self.prepared.graph.node}
        convs = [c for c in quantized_convs(quantized, self.prepared) if c.name in fp32_nodes]
        self._measure(convs)
        by_bias = {c.bias: self.deltas[c.name] for c in convs}
        for init in quantized.graph.initializer:
            if init.name in by_bias:
                bias = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array((bias.astype(np.float32) + by_bias[init.name]).astype(bias.dtype), init.name))
        return len(convs)
