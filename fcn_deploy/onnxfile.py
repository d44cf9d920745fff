"""Reading ONNX files from anywhere: clear errors for what is not one, external data, I/O shapes.

A leaf module (onnx only) shared by ``adopt``/``inspect`` and the ONNX reference runner: files
exported elsewhere come as text files named ``.onnx``, truncated downloads, weights in a separate
``.onnx.data`` file that did not travel with them, and inputs fixed at the export size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .errors import FcnDeployError, require_file

#: ONNX element types by name (the subset a segmentation model's I/O uses, plus the rest by number).
ELEM_TYPES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
}  # fmt: skip
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")
_TWO_GB = 2 * 1024**3


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return True
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


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


def external_data_files(model, base: Path) -> dict[str, int]:
    """``{location: bytes needed}`` of the external data the model refers to (paths relative to ``base``)."""
    needed: dict[str, int] = {}
    for tensor in iter_tensors(model.graph):
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        end = int(entries.get("offset", 0) or 0) + int(entries.get("length", 0) or 0)
        needed[location] = max(needed.get(location, 0), end)
    return needed


def read_onnx(path: str | Path, load_data: bool = True, what: str = "ONNX model"):
    """The ModelProto at ``path``, its external data loaded (``load_data``), or a one-line error that
    says what the file is and what to do: a text file, a truncated or corrupt file, a missing or
    short external data file."""
    import onnx

    path = require_file(path, what)
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if _looks_like_text(head):
        raise FcnDeployError(
            f"{path}: is {'empty' if not head else 'a text file'}, not an ONNX model; pass the binary .onnx file "
            "(re-export it with torch.onnx.export)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: the protobuf does not parse
        owner = path.with_name(path.stem)
        if owner.suffix.lower() == ".onnx" and owner.is_file():
            raise FcnDeployError(f"{path}: is the external weights file of {owner.name}; pass {owner} instead") from exc
        raise FcnDeployError(
            f"{path}: not a readable ONNX model, truncated or corrupt ({exc.__class__.__name__}); copy it again or re-export it"
        ) from exc
    if model.ir_version == 0 or not model.graph.output:
        raise FcnDeployError(f"{path}: not an ONNX model (no IR version or no graph outputs); pass the exported .onnx file")
    if load_data:
        load_external_data(model, path)
    return model


def load_external_data(model, path: Path) -> None:
    """Load the external data of ``model`` (read from ``path``) into it, or say which file is missing or short."""
    import onnx

    for location, needed in external_data_files(model, path.parent).items():
        data = path.parent / location
        if not data.is_file():
            raise FcnDeployError(
                f"{path}: its weights are stored in a separate file {location!r}, which is missing (looked for {data}); "
                "put it next to the model, or re-export the model as one file"
            )
        if data.stat().st_size < needed:
            raise FcnDeployError(
                f"{path}: its external data file {data.name} has {data.stat().st_size} bytes, the model needs "
                f"{needed}; it is truncated: copy it again or re-export the model"
            )
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise FcnDeployError(f"{path}: cannot read its external data ({str(exc).splitlines()[0]}); re-export the model") from exc


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
    if not value_info.type.HasField("tensor_type"):
        return value_info.type.WhichOneof("value") or "?"
    return ELEM_TYPES.get(value_info.type.tensor_type.elem_type, f"type{value_info.type.tensor_type.elem_type}")


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


#: The names adopted models give their dynamic input axes (as ``fcn-deploy export`` does).
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


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
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}:
        return "is quantized (it has QuantizeLinear/DequantizeLinear or integer conv nodes), not an FP32 model"
    if any(init.data_type == 10 for init in model.graph.initializer):  # TensorProto.FLOAT16
        return "holds FP16 weights, not an FP32 model"
    return None


def check_size(model, path: Path | str) -> None:
    if model.ByteSize() >= _TWO_GB:
        raise FcnDeployError(f"{path}: the model is over 2 GB, which a single-file ONNX cannot hold; fcn-deploy needs a smaller model")
