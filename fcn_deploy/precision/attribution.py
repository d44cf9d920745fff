"""Which quantized nodes break: each one's output error against the FP32 graph, on the same inputs.

Like Polygraphy's ``mark all`` and ONNX Runtime's ``qdq_loss_debug``, the outputs of every quantized
node (and of the tensors they read) are exposed in both graphs, and the INT8 graph's are compared
with the FP32 graph's.  The INT8 side runs on the compiling backend (``Backend.intermediate_outputs``),
because backends do not run one Q/DQ graph alike: OpenVINO fuses and quantizes on its own terms.

Per node: the relative L2 error and the cosine similarity of its output, and the error it
*introduces* (its output's relative error minus the largest relative error of what it reads), which
ranks the nodes where the damage starts above those that only inherit it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..onnxkit.graph import constant_names
from ..onnxkit.session import TensorRunner, onnxruntime_outputs
from .int8 import INT8_OP_TYPES


@dataclass
class NodeError:
    name: str
    op_type: str
    output: str
    rel_l2: float
    cosine: float
    #: Relative L2 error of its output minus the largest of its inputs'.
    introduced: float
    #: Mask agreement with FP32 when only this node is kept in float (filled for the worst nodes).
    agreement_if_float: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def quantized_nodes(int8_model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes of a Q/DQ graph that read at least one input through a DequantizeLinear."""
    producer = {out: node for node in int8_model.graph.node for out in node.output}
    return [
        node for node in int8_model.graph.node
        if node.op_type in INT8_OP_TYPES and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input)
    ]  # fmt: skip


def _float_inputs(node: onnx.NodeProto, float_model: onnx.ModelProto) -> list[str]:
    """The activation tensors ``node`` reads in the FP32 graph (its namesake there)."""
    constants = constant_names(float_model.graph)
    twin = next((n for n in float_model.graph.node if n.name == node.name), None)
    return [i for i in (twin.input if twin is not None else []) if i and i not in constants]


def node_errors(
    float_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    batches: Sequence[np.ndarray],
    int8_outputs: Callable[[onnx.ModelProto, Sequence[str]], TensorRunner] = onnxruntime_outputs,
) -> list[NodeError]:
    """Every quantized node's output error, worst first by the error it introduces.

    ``float_model`` is the FP32 graph the INT8 one was quantized from (node and tensor names match);
    ``int8_outputs`` prepares the INT8 graph to return the named tensors (on the backend's own runtime)."""
    nodes = quantized_nodes(int8_model)
    inputs = {node.name: _float_inputs(node, float_model) for node in nodes}
    names = sorted({node.output[0] for node in nodes} | {i for names in inputs.values() for i in names})
    sums: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in names}  # squared error, squared norm, dot
    norms: dict[str, list[float]] = {name: [0.0] for name in names}
    run_float, run_int8 = onnxruntime_outputs(float_model, names), int8_outputs(int8_model, names)
    for batch in batches:
        reference, measured = run_float(batch), run_int8(batch)
        for name in names:
            if name in reference and name in measured and reference[name].shape == measured[name].shape:
                a, b = measured[name].astype(np.float64).ravel(), reference[name].astype(np.float64).ravel()
                sums[name][0] += float(((a - b) ** 2).sum())
                sums[name][1] += float((b**2).sum())
                sums[name][2] += float(a @ b)
                norms[name][0] += float((a**2).sum())

    def rel(name: str) -> float | None:
        err, ref, _ = sums[name]
        return (err / ref) ** 0.5 if ref else None

    results = []
    for node in nodes:
        out = node.output[0]
        out_rel = rel(out)
        if out_rel is None:
            continue
        dot, a2, b2 = sums[out][2], norms[out][0], sums[out][1]
        cosine = dot / (a2 * b2) ** 0.5 if a2 and b2 else 1.0
        upstream = [r for r in (rel(i) for i in inputs[node.name]) if r is not None]
        results.append(NodeError(node.name, node.op_type, out, out_rel, cosine, out_rel - max(upstream, default=0.0)))
    return sorted(results, key=lambda e: (-e.introduced, -e.rel_l2))


def conv_macs(model: onnx.ModelProto, height: int, width: int) -> dict[str, float]:
    """Multiply-adds of every Conv, ConvTranspose, MatMul and Gemm node at ``height x width`` (from shape inference)."""
    from ..onnxkit.graph import set_dims

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    image = probe.graph.input[0]
    set_dims(image, [1, 3, height, width])
    probe.graph.ClearField("value_info")
    inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*inferred.graph.value_info, *inferred.graph.output]}
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    macs = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in weights:
            kernel = weights[node.input[1]]  # Conv: Cout x Cin/g x kh x kw; ConvTranspose: Cin x Cout/g x kh x kw
            if node.op_type == "Conv":
                out = shapes.get(node.output[0]) or []
                positions = int(np.prod(out[2:])) if len(out) == 4 else 0
            else:
                source = shapes.get(node.input[0]) or []
                positions = int(np.prod(source[2:])) if len(source) == 4 else 0
            macs[node.name] = float(positions * np.prod(kernel))
    return macs


def int8_compute_share(model: onnx.ModelProto, float_nodes: Sequence[str], size: tuple[int, int] = (512, 512)) -> float | None:
    """The share of the convolution multiply-adds that stays in INT8 with ``float_nodes`` kept in float
    (ConvTranspose is never quantized, so it counts as float)."""
    macs = conv_macs(model, *size)
    total = sum(macs.values())
    if not total:
        return None
    kinds = {node.name: node.op_type for node in model.graph.node}
    quantized = sum(m for name, m in macs.items() if kinds[name] in INT8_OP_TYPES and name not in set(float_nodes))
    return quantized / total
