"""ONNX graphs: walk, name, rename, prune, and read and set dims, subgraphs included.

One module for every graph edit the toolkit makes (``adopt``, the precision transforms, the INT8
repair, the references), so that subgraphs (``If``, ``Loop``, ``Scan`` bodies) are never forgotten
by one walker and handled by another.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator

from .. import dtypes

#: The names of dynamic input axes (as ``fcn-deploy export`` names them).
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
#: The ops of quantized or integer graphs (a reference must be none of them).
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def subgraphs(node) -> Iterator:
    """The graphs held by ``node``'s attributes (``If`` branches, ``Loop`` bodies, ...)."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def walk_nodes(graph) -> Iterator:
    """Every node of ``graph``, then of its subgraphs (depth first)."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from walk_nodes(sub)


def iter_tensors(graph) -> Iterator:
    """Every TensorProto of ``graph``: initializers and Constant/attribute tensors, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for sub in attr.graphs:
                yield from iter_tensors(sub)


def dims_of(value_info) -> list[int | str | None]:
    """A tensor's declared dims: ints when fixed, names when symbolic, None when unknown."""
    if not value_info.type.HasField("tensor_type") or not value_info.type.tensor_type.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            out.append(int(dim.dim_value))
        elif dim.dim_param:
            out.append(dim.dim_param)
        else:
            out.append(None)
    return out


def dtype_of(value_info) -> str:
    """A tensor's element type as a numpy dtype name (``float32``), or its kind when not a tensor."""
    if not value_info.type.HasField("tensor_type"):
        return value_info.type.WhichOneof("value") or "?"
    return dtypes.from_onnx(value_info.type.tensor_type.elem_type)


def graph_inputs(model) -> list:
    """The inputs a caller must feed (IR < 4 models also list their initializers as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def set_dims(value_info, dims: list[int | str | None]) -> None:
    """Declare a tensor's dims: ints fixed, strings named, None unknown."""
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for value in dims:
        dim = shape.dim.add()
        if isinstance(value, int):
            dim.dim_value = value
        elif value:
            dim.dim_param = value


def relax_input(model, input_name: str, axes: tuple[int, ...] = (0, 2, 3)) -> list[int]:
    """Make ``axes`` of the input dynamic (named as :data:`AXIS_NAMES`), in place; returns the axes
    that were fixed.

    When any axis was fixed, shapes recorded at the export size are stale: ``value_info`` and the
    outputs' shapes are cleared so that runtimes infer them again.
    """
    value = next(i for i in model.graph.input if i.name == input_name)
    dims = dims_of(value)
    fixed = [axis for axis in axes if isinstance(dims[axis], int)]
    set_dims(value, [AXIS_NAMES[axis] if axis in axes else dims[axis] for axis in range(len(dims))])
    if fixed:
        model.graph.ClearField("value_info")
        for output in model.graph.output:
            output.type.tensor_type.ClearField("shape")
    return fixed


def precision_problem(model) -> str | None:
    """Why ``model`` is not an FP32 graph (quantized, FP16 weights, an fcn-deploy precision graph), or None."""
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("fcn_deploy.precision", "fp32") != "fp32" or "fcn_deploy.backend" in props:
        built = f" {props['fcn_deploy.backend']} engine" if "fcn_deploy.backend" in props else " graph"
        return f"is an fcn-deploy {props.get('fcn_deploy.precision', 'fp32')}{built}, not the FP32 model"
    ops = {node.op_type for node in model.graph.node}
    if ops & QUANTIZED_OPS:
        return "is quantized (it has QuantizeLinear/DequantizeLinear or integer conv nodes), not an FP32 model"
    if any(init.data_type == 10 for init in model.graph.initializer):  # TensorProto.FLOAT16
        return "holds FP16 weights, not an FP32 model"
    return None


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def all_names(graph, names: set[str] | None = None) -> set[str]:
    """Every tensor name used in ``graph`` and its subgraphs."""
    names = set() if names is None else names
    for node in walk_nodes(graph):
        names.update(node.input)
        names.update(node.output)
    names.update(v.name for v in [*graph.input, *graph.output, *graph.value_info])
    names.update(i.name for i in graph.initializer)
    return names


def unique_name(names: set[str], base: str) -> str:
    """``base``, or ``base_N`` when taken; the result is added to ``names``."""
    name, index = base, 0
    while name in names:
        index += 1
        name = f"{base}_{index}"
    names.add(name)
    return name


def rename(graph, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph`` and its subgraphs."""
    for node in walk_nodes(graph):
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for index, name in enumerate(node.output):
            if name == old:
                node.output[index] = new
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for sparse in graph.sparse_initializer:
        if sparse.values.name == old:
            sparse.values.name = new


def subgraph_refs(node) -> set[str]:
    """The tensors a node's subgraphs read (they may read the outer graph's tensors)."""
    return {name for sub in subgraphs(node) for inner in walk_nodes(sub) for name in inner.input}


def prune(graph) -> int:
    """Drop the nodes, initializers and value_info no graph output needs; returns the nodes dropped."""
    needed = {o.name for o in graph.output}
    keep = []
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if any(o in needed for o in node.output if o):
            keep.append(index)
            needed.update(i for i in node.input if i)
            needed.update(subgraph_refs(node))
    kept = set(keep)
    dropped = 0
    for index in reversed(range(len(graph.node))):
        if index not in kept:
            del graph.node[index]
            dropped += 1
    initializers = {i.name for i in graph.initializer}  # before pruning: unneeded weights must go from the inputs too
    for field in (graph.initializer, graph.value_info):
        for index in reversed(range(len(field))):
            if field[index].name not in needed:
                del field[index]
    for index in reversed(range(len(graph.input))):  # IR < 4 lists weights as inputs too
        name = graph.input[index].name
        if name not in needed and name in initializers:
            del graph.input[index]
    return dropped


def name_nodes(model):
    """``model`` with every top-level node named (``<op>_<index>`` where it had none), as a copy when
    any name was missing: Q/DQ placement and the INT8 repair address nodes by name."""
    import onnx

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


def producers(graph) -> dict:
    """``{tensor name: the node that writes it}`` (top level)."""
    return {out: node for node in graph.node for out in node.output}


def constant_names(graph) -> set[str]:
    """Initializers and Constant node outputs: tensors known before the graph runs."""
    return {i.name for i in graph.initializer} | {out for node in graph.node if node.op_type == "Constant" for out in node.output}


def op_histogram(model) -> dict[str, int]:
    """``{op type: count}``, most common first, subgraphs included (custom domains prefixed)."""
    counts = collections.Counter(
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}" for node in walk_nodes(model.graph)
    )
    return dict(counts.most_common())


def parameter_count(model) -> int:
    """Elements of the float weights (initializers and constants; read from the dims, no data needed)."""
    floats = {dtypes.to_onnx(name) for name in dtypes.FLOAT_TYPES}
    return sum(math.prod(t.dims) for t in iter_tensors(model.graph) if t.data_type in floats)
