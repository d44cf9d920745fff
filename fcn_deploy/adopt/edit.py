"""The graph edits ``adopt`` makes to bring a foreign ONNX to the toolkit's contract.

Each edit is small and named here; the graph walking, renaming and pruning itself is
:mod:`fcn_deploy.onnxkit`'s (subgraphs included), so that no edit forgets an ``If`` or ``Loop`` body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..onnxkit import all_names, prune, relax_input, rename, set_dims, unique_name
from ..onnxkit.graph import default_opset
from .contract import INPUT_NAME, OUTPUT_NAMES


@dataclass
class Renamed:
    """What :func:`keep_one_output` did: the outputs dropped, the nodes pruned, and the names the kept
    output now has (``low_name``: the tensor before the resize adopt adds, when it adds one)."""

    dropped: list[str]
    pruned: int
    final_out: str
    low_name: str | None


def keep_one_output(model, source_input: str, chosen: str, kind: str, resize: bool) -> Renamed:
    """Keep only output ``chosen`` (and the nodes it needs), and give the image input and that output
    the contract's names; tensors that already had those names are renamed out of the way."""
    graph = model.graph
    names = all_names(graph)
    final_out = OUTPUT_NAMES[kind]
    for wanted in {INPUT_NAME, final_out} - {source_input, chosen}:
        if wanted in names:
            rename(graph, wanted, unique_name(names, f"{wanted}_original"))
    dropped = [o.name for o in graph.output if o.name != chosen]
    for index in reversed(range(len(graph.output))):
        if graph.output[index].name != chosen:
            del graph.output[index]
    pruned = prune(graph)
    if source_input != INPUT_NAME:
        rename(graph, source_input, INPUT_NAME)
    low_name = unique_name(names, f"{final_out}_before_resize") if resize else None
    if chosen != (low_name or final_out):
        rename(graph, chosen, low_name or final_out)
    image_first(graph)
    return Renamed(dropped, pruned, final_out, low_name)


def image_first(graph) -> None:
    """Put the image first among the graph inputs (IR < 4 models may list weights before it)."""
    import onnx

    if graph.input[0].name == INPUT_NAME:
        return
    values = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in graph.input]
    values.sort(key=lambda v: v.name != INPUT_NAME)
    graph.ClearField("input")
    graph.input.extend(values)


def add_resize(model, low: str, image: str, out: str) -> None:
    """``out = Resize(low, sizes = N, C of low + H, W of image)``: bilinear, ``half_pixel``."""
    from onnx import TensorProto, helper, numpy_helper

    opset = default_opset(model)
    graph = model.graph
    tag = unique_name(all_names(graph), "fcn_deploy_resize")
    consts = {"nc_start": [0], "nc_end": [2], "hw_start": [2], "hw_end": [4]}
    for key, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), f"{tag}/{key}"))
    if opset >= 13:
        roi = scales = ""
    else:  # opset 11-12 want roi and scales inputs: empty tensors
        roi, scales = f"{tag}/roi", f"{tag}/scales"
        graph.initializer.append(helper.make_tensor(roi, TensorProto.FLOAT, [0], []))
        graph.initializer.append(helper.make_tensor(scales, TensorProto.FLOAT, [0], []))
    graph.node.extend([
        helper.make_node("Shape", [low], [f"{tag}/low_shape"], name=f"{tag}/low_shape"),
        helper.make_node("Slice", [f"{tag}/low_shape", f"{tag}/nc_start", f"{tag}/nc_end"], [f"{tag}/nc"], name=f"{tag}/nc"),
        helper.make_node("Shape", [image], [f"{tag}/image_shape"], name=f"{tag}/image_shape"),
        helper.make_node("Slice", [f"{tag}/image_shape", f"{tag}/hw_start", f"{tag}/hw_end"], [f"{tag}/hw"], name=f"{tag}/hw"),
        helper.make_node("Concat", [f"{tag}/nc", f"{tag}/hw"], [f"{tag}/sizes"], name=f"{tag}/sizes", axis=0),
        helper.make_node("Resize", [low, roi, scales, f"{tag}/sizes"], [out], name=tag, mode="linear",
                         coordinate_transformation_mode="half_pixel"),
    ])  # fmt: skip


@dataclass
class Candidate:
    """An edited graph ready to verify, and whether its batch is dynamic.  ``low_name``: the pre-resize
    tensor, added as an extra output only while verifying (see :func:`with_low_output`)."""

    model: Any
    low_name: str | None
    batch_dynamic: bool


def candidate(base_bytes: bytes, renamed: Renamed, kind: str, num_classes: int, source_dims, *, relax_batch: bool) -> Candidate:
    """The renamed graph (``base_bytes``) with dynamic height and width (and batch, ``relax_batch``),
    the resize to the input size where the logits come out smaller, and the output's dims declared."""
    import onnx

    edited = onnx.ModelProto()
    edited.ParseFromString(base_bytes)
    relax_input(edited, INPUT_NAME, (0, 2, 3) if relax_batch else (2, 3))
    output = edited.graph.output[0]
    batch = "batch" if relax_batch or not isinstance(source_dims[0], int) else source_dims[0]
    if renamed.low_name:
        add_resize(edited, renamed.low_name, INPUT_NAME, renamed.final_out)
        output.name = renamed.final_out
    set_dims(output, [batch, num_classes, "height", "width"] if kind == "logits" else [batch, "height", "width"])
    return Candidate(edited, renamed.low_name, relax_batch or not isinstance(source_dims[0], int))


def with_low_output(built: Candidate) -> bytes:
    """The candidate serialized with its pre-resize tensor as an extra output (the proof checks its stride)."""
    import onnx

    model = built.model
    if not built.low_name:
        return model.SerializeToString()
    model.graph.output.append(onnx.helper.make_tensor_value_info(built.low_name, onnx.TensorProto.FLOAT, None))
    try:
        return model.SerializeToString()
    finally:
        del model.graph.output[-1]
