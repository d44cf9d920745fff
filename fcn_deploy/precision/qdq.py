"""Q/DQ graph edits: where TensorRT fuses a residual Add, and taking the Q/DQ off chosen inputs."""

from __future__ import annotations

import onnx

from ..onnxkit.graph import constant_names

#: Ops a residual Add's conv branch may pass through on its way to the Add (TensorRT still fuses them).
FUSIBLE_PATH_OPS = {"Relu", "BatchNormalization", "MaxPool", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity"}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def residual_add_inputs(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """``(Add node name, input index)`` of every Add input that TensorRT fuses into its producing conv.

    ModelOpt's rule: of an Add's two inputs, the one whose producer is a conv (possibly behind
    ReLU, BatchNorm, pooling or copy ops) and lies on the longer path back to the inputs' lowest
    common ancestor is the conv's output, and the other is the residual.  With both inputs from the
    same conv, or the conv being that ancestor itself, nothing fuses.
    """
    nodes = list(model.graph.node)
    producer = {out: index for index, node in enumerate(nodes) for out in node.output}
    constants = constant_names(model.graph)

    def backbone(tensor: str) -> int | None:
        index = producer.get(tensor)
        while index is not None and nodes[index].op_type not in ("Conv", "ConvTranspose"):
            if nodes[index].op_type not in FUSIBLE_PATH_OPS:
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
        unused = [n for n in model.graph.node if n.op_type in QDQ_OPS and not set(n.output) & read]
        if not unused:
            break
        for node in unused:
            model.graph.node.remove(node)
    read = {i for node in model.graph.node for i in node.input}
    for init in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(init)
    return rewired


def quantized_inputs(model: onnx.ModelProto, node_name: str) -> list[tuple[str, int]]:
    """``(node, input index)`` of every input of ``node_name`` that is read through a Q/DQ pair
    (activations; weights are quantized initializers behind a DequantizeLinear)."""
    producer = {out: n for n in model.graph.node for out in n.output}
    node = next((n for n in model.graph.node if n.name == node_name), None)
    if node is None:
        return []
    return [
        (node_name, index) for index, name in enumerate(node.input) if name in producer and producer[name].op_type == "DequantizeLinear"
    ]


def qdq_pairs(model: onnx.ModelProto) -> int:
    """How many QuantizeLinear nodes the graph has (one per quantized activation tensor)."""
    return sum(1 for node in model.graph.node if node.op_type == "QuantizeLinear")


#: The first ai.onnx opset whose QuantizeLinear/DequantizeLinear take FP16 scales.
FP16_QDQ_OPSET = 19


def float_ops_in_fp16(model: onnx.ModelProto, keep_fp32: list[str]) -> onnx.ModelProto:
    """``model`` (a Q/DQ graph) with its float ops in FP16, I/O float32 and ``keep_fp32`` in FP32.

    The Q/DQ nodes take FP16 scales, so a DQ feeds its FP16 op with no Cast between them (TensorRT
    fuses Q/DQ into the op it feeds); before opset 19, whose Q/DQ take float32 scales only, they stay
    FP32 behind casts."""
    import warnings

    from onnxconverter_common import float16

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    block = list(keep_fp32)
    if opset < FP16_QDQ_OPSET:
        block += [n.name for n in model.graph.node if n.op_type in QDQ_OPS]
    with warnings.catch_warnings():  # it warns once per weight it rounds to the smallest FP16 value
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=block, max_finite_val=65504.0,
                                                disable_shape_infer=False)  # fmt: skip


#: The first ai.onnx opset with a HardSwish op.
HARDSWISH_OPSET = 14


def whole_hardswish(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with every ``x * HardSigmoid(x)`` (alpha 1/6, beta 1/2) made one ``HardSwish`` again.

    ONNX Runtime's optimizer (in ``quant_pre_process``) splits HardSwish into HardSigmoid and Mul,
    and Mul is a quantized op: its Q/DQ pairs then sit inside the activation, where OpenVINO can
    neither fuse it into the convolution before it nor run HardSigmoid in its blocked layout (a
    reference kernel between two reorders).  A whole HardSwish is float and unquantized, and the
    conv + HardSwish + Q that follows becomes one OpenVINO kernel.  The Mul keeps its name, so float
    nodes and sensitivities still name the same place.  Returns the graph and how many it joined."""
    from onnx import helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < HARDSWISH_OPSET:
        return model, 0
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for output in graph.output:
        readers[output.name] = readers.get(output.name, 0) + 1
    joined: dict[str, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for x, gate in (tuple(node.input), tuple(reversed(node.input))):
            sigmoid = producer.get(gate)
            if sigmoid is None or sigmoid.op_type != "HardSigmoid" or sigmoid.input[0] != x or readers.get(gate) != 1:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in sigmoid.attribute}
            if abs(attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(attrs.get("beta", 0.5) - 0.5) > 1e-6:
                continue
            joined[node.name] = helper.make_node("HardSwish", [x], list(node.output), name=node.name)
            dropped.add(id(sigmoid))
            break
    if not joined:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [joined.get(node.name, node) for node in graph.node if id(node) not in dropped]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, len(joined)
