"""Bring your own model: ``inspect`` any model file, and ``adopt`` a segmentation ONNX exported elsewhere.

Most people arrive with an ONNX from torchvision, mmsegmentation or their own training code.
``adopt`` writes a copy that every fcn-deploy command takes (build-engine on every backend,
validate, infer, benchmark), changing only what the toolkit's contract needs, and records each change
in the metadata (:attr:`ModelMeta.adopted`):

* the image input is renamed ``image`` and the chosen output ``logits`` (``mask`` for an argmax
  output): the ONNX Runtime, OpenVINO and TensorRT runners find outputs by these names, the precision
  transforms and the engine profile read the first graph input, and Triton configs name tensors;
  renaming once here keeps every backend name-agnostic of foreign exports;
* other outputs (torchvision's ``aux`` head) are dropped, with the nodes only they needed, so no
  engine computes what nobody reads;
* a fixed height and width (and batch, where the graph allows it) become dynamic;
* logits that come out at a fraction of the input size get a bilinear ``Resize`` to the input size
  (``half_pixel``, PyTorch's ``align_corners=False``, what torchvision's heads do themselves);
* the weights are folded into one file (external ``.onnx.data`` included).

Nothing is written until ONNX Runtime has run the result at several sizes (the minimum, odd sizes,
batch 2) with output H x W equal to the input's, and its logits match the source's at the size
the source was probed at.  ``inspect`` shows what a file is and whether it fits, for any ``.onnx``,
engine (through its manifest) or checkpoint.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .backends.base import upsample_bilinear
from .backends.manifest import has_manifest, read_manifest
from .data.images import preprocess
from .data.synthetic import make_scene
from .errors import CheckFailed, FcnDeployError, require_file
from .fileio import atomic_path, sha256_file
from .meta import IMAGENET_MEAN, IMAGENET_STD, ONNX_META_KEY, ModelMeta, default_palette, read_onnx_props, write_onnx_meta
from .onnxfile import (
    FLOAT_TYPES, check_size, dims_of, dtype_of, external_data_files, graph_inputs, iter_tensors,
    load_external_data, precision_problem, read_onnx, relax_input, set_dims,
)  # fmt: skip

#: Seed of the synthetic scenes adopt and inspect probe models with (disjoint from the others).
PROBE_SEED = 5
#: Minimum sizes tried, smallest first, when --min-size is not given.
MIN_SIZE_CANDIDATES = (32, 64, 128, 256)
#: How far adopted logits may differ from the source's (relative to max(1, max |logit|)): the same graph in the same runtime.
MATCH_TOLERANCE = 1e-3
#: Output names adopt gives, by kind (what every runner and Triton config looks for).
OUTPUT_NAMES = {"logits": "logits", "mask": "mask"}
INPUT_NAME = "image"


@dataclass
class AdoptOptions:
    num_classes: int | None = None
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    #: Normalisation in 0..1 units, as torchvision gives it (default: ImageNet's).
    mean: list[float] | None = None
    std: list[float] | None = None
    #: The logits (or mask) output to keep, when the model has several.
    output: str | None = None
    #: The image input, when the graph lists more inputs that all have defaults.
    input_name: str | None = None
    min_size: int | None = None


# --------------------------------------------------------------------------- parsing (CLI flags)


def parse_rgb_floats(text: str, flag: str) -> list[float]:
    """``"0.485,0.456,0.406"`` -> three floats in 0..1 (torchvision's units)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise FcnDeployError(f"{flag} {text!r}: write three numbers r,g,b, e.g. 0.485,0.456,0.406") from None
    if len(values) != 3:
        raise FcnDeployError(f"{flag} {text!r}: write three numbers r,g,b (one per channel)")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise FcnDeployError(f"{flag} {text!r}: give 0..1 units as torchvision does (divide 0..255 values by 255)")
    if flag == "--std" and any(v <= 0 for v in values):
        raise FcnDeployError(f"--std {text!r}: standard deviations must be positive")
    return values


def _read_json(path: Path, flag: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FcnDeployError(f"{flag} {path}: not valid JSON ({exc})") from exc


def parse_class_names(text: str) -> tuple[list[str], list[list[int]] | None]:
    """``"a,b,c"``, or a file: JSON (a list, or ``{"class_names": [...], "palette": [...]}``) or text
    (one name per line).  Returns the names and the file's palette, if it has one."""
    path = Path(text)
    palette = None
    if path.is_file():
        if path.suffix.lower() == ".json":
            data = _read_json(path, "--classes")
            if isinstance(data, dict):
                names, palette = data.get("class_names"), data.get("palette")
            else:
                names = data
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise FcnDeployError(f"--classes {path}: give a JSON list of names or {{\"class_names\": [...]}}")
            palette = parse_palette(json.dumps(palette)) if palette is not None else None
        else:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [name.strip() for name in text.split(",")]
    if not names or any(not n for n in names):
        raise FcnDeployError(f"--classes {text!r}: give the class names separated by commas (or a file), with no empty name")
    if len(set(names)) != len(names):
        raise FcnDeployError(f"--classes {text!r}: class names must be unique")
    return names, palette


def parse_palette(text: str) -> list[list[int]]:
    """``"r,g,b;r,g,b"`` or a JSON file (a list of ``[r, g, b]``, or ``{"palette": [...]}``), values 0..255."""
    path = Path(text)
    if path.is_file():
        data = _read_json(path, "--palette")
        data = data.get("palette") if isinstance(data, dict) else data
    elif text.lstrip().startswith("["):
        data = _read_json_text(text)
    else:
        try:
            data = [[int(v) for v in item.split(",")] for item in text.split(";") if item.strip()]
        except ValueError:
            raise FcnDeployError(f"--palette {text!r}: write r,g,b;r,g,b (0..255) or give a JSON file") from None
    if (
        not isinstance(data, list) or not data
        or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in data)
    ):  # fmt: skip
        raise FcnDeployError(f"--palette {text!r}: give one r,g,b colour (integers 0..255) per class")
    return data


def _read_json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FcnDeployError(f"--palette {text!r}: not valid JSON ({exc})") from exc


# --------------------------------------------------------------------------- graph analysis


def _shape_text(shape) -> str:
    return " x ".join("?" if d is None or d == "" else str(d) for d in shape) if shape else "?"


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _walk_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk_nodes(attr.g)
            for sub in attr.graphs:
                yield from _walk_nodes(sub)


def op_histogram(model) -> dict[str, int]:
    counts = collections.Counter(
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}" for node in _walk_nodes(model.graph)
    )
    return dict(counts.most_common())


def parameter_count(model) -> int:
    """Elements of the float weights (initializers and constants; read from the dims, no data needed)."""
    return sum(math.prod(t.dims) for t in iter_tensors(model.graph) if t.data_type in (1, 10, 11, 16))


def _image_input(model, input_name: str | None = None) -> tuple[Any, list[str]]:
    """The image input and what keeps it from being one (sentences, empty when it fits)."""
    fed = graph_inputs(model)
    if input_name is not None:
        chosen = next((i for i in model.graph.input if i.name == input_name), None)
        if chosen is None:
            listed = ", ".join(i.name for i in fed) or "none"
            return None, [f"has no input {input_name!r} (inputs: {listed}); pass one of those to --input-name"]
        others = [i for i in fed if i.name != input_name]
    else:
        if not fed:
            return None, ["has no inputs to feed; is it a complete model?"]
        chosen, others = fed[0], fed[1:]
    if others:
        listed = ", ".join(f"{i.name} ({dtype_of(i)} {_shape_text(dims_of(i))})" for i in [chosen, *others])
        return chosen, [f"has {len(others) + 1} inputs ({listed}); fcn-deploy feeds one image (N x 3 x H x W): "
                        "re-export the model with the image as its only input"]  # fmt: skip
    dtype, dims = dtype_of(chosen), dims_of(chosen)
    shape = _shape_text(dims)
    if len(dims) != 4:
        return chosen, [f"input {chosen.name!r} has shape {shape} (rank {len(dims)}); fcn-deploy feeds images N x 3 x H x W"]
    if dims[1] != 3 and dims[3] == 3:
        return chosen, [f"input {chosen.name!r} is {shape}, channels last (NHWC); fcn-deploy feeds channels first, "
                        "N x 3 x H x W: re-export the model channels first (or put a Transpose at its input)"]  # fmt: skip
    if isinstance(dims[1], int) and dims[1] != 3:
        return chosen, [f"input {chosen.name!r} is {shape}: {dims[1]} channels; fcn-deploy feeds RGB images N x 3 x H x W"]
    if dtype != "float32":
        hint = ("export the FP32 model: fcn-deploy makes the FP16 and INT8 graphs itself" if dtype in FLOAT_TYPES
                else "re-export it without the pixel conversion: fcn-deploy feeds normalised float32 images")  # fmt: skip
        return chosen, [f"input {chosen.name!r} is {dtype}; {hint}"]
    return chosen, []


def _output_role(dtype: str, shape: tuple[int, ...], in_hw: tuple[int, int]) -> tuple[str | None, str]:
    """``("logits" | "mask" | None, why)`` for an output of ``shape`` at input ``in_hw``."""
    text = "x".join(map(str, shape))
    if np.dtype(dtype).kind == "f" and len(shape) == 4:
        if tuple(shape[1:3]) == in_hw and tuple(shape[2:]) != in_hw:
            return None, f"is {text} for a {in_hw[0]}x{in_hw[1]} input: channels last; fcn-deploy reads logits N x C x H x W"
        return "logits", f"{text} logits"
    if np.dtype(dtype).kind in "iu" and len(shape) == 3:
        return "mask", f"{text} class mask"
    if len(shape) == 2:
        return None, f"is {text} ({dtype}): one score vector per image, a classifier, not a segmentation model"
    return None, f"is {text} ({dtype}): neither logits N x C x H x W (float) nor a mask N x H x W (integer)"


def _pick_output(shapes: dict[str, tuple[str, tuple[int, ...]]], in_hw, requested: str | None):
    """``(name, kind, note)`` of the output to keep, or a problem sentence as ``(None, None, problem)``."""
    listed = ", ".join(f"{name} ({'x'.join(map(str, s))} {d})" for name, (d, s) in shapes.items())
    roles = {name: _output_role(d, s, in_hw) for name, (d, s) in shapes.items()}
    if requested is not None:
        if requested not in shapes:
            return None, None, f"has no output {requested!r} (outputs: {listed}); pass one of those to --output"
        kind, why = roles[requested]
        return (requested, kind, "") if kind else (None, None, f"output {requested!r} {why}")
    for kind in ("logits", "mask"):
        found = [name for name, (role, _) in roles.items() if role == kind]
        if len(found) == 1:
            return found[0], kind, ""
        if len(found) > 1:
            preferred = [name for name in found if name in ("logits", "out", "output")]
            if len(preferred) == 1:
                others = ", ".join(n for n in found if n != preferred[0])
                return preferred[0], kind, f"kept output {preferred[0]!r} of {', '.join(found)} (pass --output to keep {others} instead)"
            return None, None, f"has {len(found)} outputs that could be the {kind} ({listed}); pick one with --output NAME"
    whys = "; ".join(f"output {name!r} {why}" for name, (_, why) in roles.items())
    return None, None, f"has no segmentation output: {whys}"


def stride_candidates(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> set[int]:
    """Output strides that explain ``out_hw`` at input ``in_hw`` (each side within one pixel of
    input / stride); ``{1}`` when the sizes are equal, empty when no stride explains them."""
    if tuple(out_hw) == tuple(in_hw):
        return {1}
    return {s for s in range(2, 65) if all(abs(o - i / s) <= 1 for i, o in zip(in_hw, out_hw))}


# --------------------------------------------------------------------------- running in ONNX Runtime


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """One line of an exception; ONNX Runtime's kernel failures shortened to the node and the reason."""
    text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    failed = re.search(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", text)
    if failed:
        op, node, why = failed.groups()
        why = why.split(" was false. ", 1)[-1]
        text = f"its {op} node {node!r} failed: {why}" if node else f"a {op} node failed: {why}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Probe:
    """An ONNX Runtime CPU session over a model (bytes or a path), fed synthetic scenes."""

    def __init__(self, model: bytes | str, where: str | Path, mean, std):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures come back as exceptions, said once in our words
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise FcnDeployError(f"{where}: ONNX Runtime cannot load it ({_first_line(exc)})") from exc
        self.input = self.session.get_inputs()[0].name
        self.mean, self.std = mean, std

    def batch(self, n: int, height: int, width: int) -> np.ndarray:
        images = np.stack([make_scene(PROBE_SEED, i, height, width)[0] for i in range(n)])
        return preprocess(images, self.mean, self.std)

    def run(self, n: int, height: int, width: int, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name; raises RuntimeError-like exceptions from ORT to the caller."""
        names = outputs or [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.input: self.batch(n, height, width)})))


def _first_probe_size(dims) -> tuple[int, int, int]:
    """The first size a model is run at: its fixed dims, else batch 1 at an odd 97x129."""
    n = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1
    h = dims[2] if isinstance(dims[2], int) and dims[2] > 0 else 97
    w = dims[3] if isinstance(dims[3], int) and dims[3] > 0 else 129
    return n, h, w


# --------------------------------------------------------------------------- graph edits


def _all_names(graph, names: set[str] | None = None) -> set[str]:
    names = set() if names is None else names
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            if attr.HasField("g"):
                _all_names(attr.g, names)
            for sub in attr.graphs:
                _all_names(sub, names)
    names.update(v.name for v in [*graph.input, *graph.output, *graph.value_info])
    names.update(i.name for i in graph.initializer)
    return names


def _unique(names: set[str], base: str) -> str:
    name, index = base, 0
    while name in names:
        index += 1
        name = f"{base}_{index}"
    names.add(name)
    return name


def _rename(graph, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph`` and its subgraphs."""
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for index, name in enumerate(node.output):
            if name == old:
                node.output[index] = new
        for attr in node.attribute:
            if attr.HasField("g"):
                _rename(attr.g, old, new)
            for sub in attr.graphs:
                _rename(sub, old, new)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for sparse in graph.sparse_initializer:
        if sparse.values.name == old:
            sparse.values.name = new


def _subgraph_refs(node) -> set[str]:
    refs: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for inner in _walk_nodes(sub):
                refs.update(inner.input)
    return refs


def _prune(graph) -> int:
    """Drop the nodes, initializers and value_info no graph output needs; returns the nodes dropped."""
    needed = {o.name for o in graph.output}
    keep = []
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if any(o in needed for o in node.output if o):
            keep.append(index)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_refs(node))
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


def _image_first(graph) -> None:
    """Put the image first among the graph inputs (IR < 4 models may list weights before it)."""
    import onnx

    if graph.input[0].name == INPUT_NAME:
        return
    values = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in graph.input]
    values.sort(key=lambda v: v.name != INPUT_NAME)
    graph.ClearField("input")
    graph.input.extend(values)


def _add_resize(model, low: str, image: str, out: str) -> None:
    """``out = Resize(low, sizes = N, C of low + H, W of image)``: bilinear, ``half_pixel``."""
    from onnx import TensorProto, helper, numpy_helper

    opset = _default_opset(model)
    graph = model.graph
    names = _all_names(graph)
    tag = _unique(names, "fcn_deploy_resize")
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


# --------------------------------------------------------------------------- adopt


@dataclass
class _Candidate:
    """An edited graph ready to verify: its bytes, and whether it carries the pre-resize tensor as an extra output."""

    model: Any
    low_name: str | None
    batch_dynamic: bool


def adopt(src: str | Path, out: str | Path, options: AdoptOptions | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``src`` (a foreign FP32 segmentation ONNX) to ``out`` with fcn-deploy metadata, after proving it runs.

    Returns the report (what was changed, the sizes verified, the metadata).
    """
    import onnx

    options = options or AdoptOptions()
    src = require_file(src, "ONNX model", "pass the .onnx file to adopt")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise FcnDeployError(f"-o {out}: give a file name ending in .onnx")
    if out.exists() and out.resolve() == src.resolve():
        raise FcnDeployError(f"-o {out}: would overwrite the source model; choose another output path")
    if options.min_size is not None and options.min_size < 2:
        raise FcnDeployError(f"--min-size {options.min_size}: give at least 2 pixels")
    mean = list(options.mean or IMAGENET_MEAN)
    std = list(options.std or IMAGENET_STD)

    model = read_onnx(src, load_data=False)
    external = external_data_files(model, src.parent)
    load_external_data(model, src)
    problem = precision_problem(model)
    if problem:
        raise FcnDeployError(f"{src}: {problem}; adopt the FP32 model (fcn-deploy makes FP16 and INT8 engines from it)")
    check_size(model, src)
    if ONNX_META_KEY in read_onnx_props(model):
        log(f"note: {src.name} already carries fcn-deploy metadata; adopt replaces it")
    image, problems = _image_input(model, options.input_name)
    if problems:
        raise FcnDeployError(f"{src}: {problems[0]}")
    source_name, source_dims = image.name, dims_of(image)
    opset = _default_opset(model)
    log(
        f"source: {src.name} ({f'{model.producer_name} {model.producer_version}'.strip() or 'unknown producer'}, opset {opset}, "
        f"{parameter_count(model) / 1e6:.2f}M parameters{', external data ' + ', '.join(external) if external else ''})"
    )

    # 1. The source as it is, at its own size: which output holds the logits, and at what resolution.
    source_bytes = model.SerializeToString()
    n0, h0, w0 = _first_probe_size(source_dims)
    source = _Probe(source_bytes, src, mean, std)
    try:
        source_out = source.run(n0, h0, w0)
    except Exception as exc:
        raise FcnDeployError(f"{src}: ONNX Runtime cannot run it on a {n0}x3x{h0}x{w0} image ({_first_line(exc)})") from exc
    del source
    shapes = {name: (str(value.dtype), tuple(value.shape)) for name, value in source_out.items()}
    chosen, kind, note = _pick_output(shapes, (h0, w0), options.output)
    if chosen is None:
        raise FcnDeployError(f"{src}: {note}")
    if note:
        log(note)
    out_shape = shapes[chosen][1]
    num_classes = _resolve_num_classes(src, chosen, kind, out_shape, options)
    class_names, palette = _resolve_classes(num_classes, options, log)
    low_hw = tuple(out_shape[2:]) if kind == "logits" else tuple(out_shape[1:])
    strides = stride_candidates((h0, w0), low_hw)
    if not strides:
        raise FcnDeployError(
            f"{src}: output {chosen!r} is {'x'.join(map(str, out_shape))} for a {n0}x3x{h0}x{w0} input: neither the input's "
            "height and width nor a fixed fraction of them; fcn-deploy needs per-pixel outputs at the input size"
        )
    resize = strides != {1}
    if resize and opset < 11:
        raise FcnDeployError(f"{src}: its logits need resizing to the input size, and opset {opset} has no Resize to sizes; "
                             "re-export it with opset 11 or later")  # fmt: skip
    if resize and kind == "mask":
        raise FcnDeployError(
            f"{src}: mask output {chosen!r} is {low_hw[0]}x{low_hw[1]} for a {h0}x{w0} input; a class mask cannot be "
            "resized faithfully: export the logits output instead"
        )
    log(f"image input {source_name!r} ({_shape_text(source_dims)}); {kind} output {chosen!r}: "
        f"{'x'.join(map(str, out_shape))} at {n0}x3x{h0}x{w0}")  # fmt: skip

    # 2. The edits: names, dropped outputs, dynamic dims, resize.
    graph = model.graph
    names = _all_names(graph)
    final_out = OUTPUT_NAMES[kind]
    for wanted in {INPUT_NAME, final_out} - {source_name, chosen}:
        if wanted in names:
            _rename(graph, wanted, _unique(names, f"{wanted}_original"))
    dropped = [o.name for o in graph.output if o.name != chosen]
    for index in reversed(range(len(graph.output))):
        if graph.output[index].name != chosen:
            del graph.output[index]
    pruned = _prune(graph)
    if dropped:
        log(f"dropped output(s) {', '.join(dropped)} and the {pruned} node(s) only they needed")
    if source_name != INPUT_NAME:
        _rename(graph, source_name, INPUT_NAME)
    low_name = _unique(names, f"{final_out}_before_resize") if resize else None
    if chosen != (low_name or final_out):
        _rename(graph, chosen, low_name or final_out)
    _image_first(graph)
    base_bytes = model.SerializeToString()
    del model

    def candidate(relax_batch: bool) -> _Candidate:
        edited = onnx.ModelProto()
        edited.ParseFromString(base_bytes)
        relax_input(edited, INPUT_NAME, (0, 2, 3) if relax_batch else (2, 3))
        output = edited.graph.output[0]
        batch = "batch" if relax_batch or not isinstance(source_dims[0], int) else source_dims[0]
        if resize:
            _add_resize(edited, low_name, INPUT_NAME, final_out)
            output.name = final_out
        set_dims(output, [batch, num_classes, "height", "width"] if kind == "logits" else [batch, "height", "width"])
        return _Candidate(edited, low_name, relax_batch or not isinstance(source_dims[0], int))

    fixed_hw = [d for d in source_dims[2:] if isinstance(d, int)]
    fixed_batch = isinstance(source_dims[0], int)

    # 3. Proof: ONNX Runtime at several sizes (and batch 2), output H x W == input H x W.
    context = dict(src=src, kind=kind, num_classes=num_classes, strides=strides, mean=mean, std=std,
                   static=source_dims if fixed_hw else None, fixed_batch=fixed_batch)  # fmt: skip
    built = candidate(relax_batch=True)
    try:
        verified, min_size, strides, final_run = _verify(built, options.min_size, (n0, h0, w0), **context)
    except _BatchFailed as exc:
        log(f"batch stays fixed at {source_dims[0]}: the graph does not run at batch 2 ({exc})")
        built = candidate(relax_batch=False)
        verified, min_size, strides, final_run = _verify(built, options.min_size, (n0, h0, w0), **context)
    stride = min(strides) if resize else 1

    # 4. The adopted graph computes what the source computes (after the same resize, done independently).
    expected = source_out[chosen]
    if resize:
        expected = upsample_bilinear(expected, h0, w0)
    got = final_run
    if kind == "logits":
        max_diff = float(np.abs(got.astype(np.float32) - expected.astype(np.float32)).max())
        limit = MATCH_TOLERANCE * max(1.0, float(np.abs(expected).max()))
        if not max_diff <= limit:
            raise CheckFailed(f"{src}: the adopted graph's logits differ from the source's by {max_diff:.3g} (> {limit:.3g}) "
                              f"at {n0}x3x{h0}x{w0}; nothing was written (please report this)")  # fmt: skip
    else:
        max_diff = float((got != expected).mean())
        if max_diff:
            raise CheckFailed(f"{src}: the adopted graph's mask differs from the source's at {n0}x3x{h0}x{w0}; nothing was written")

    # 5. Metadata and the one-file write.
    final = built.model
    if built.low_name:  # the pre-resize tensor was an extra output only for the proof
        for index in reversed(range(len(final.graph.output))):
            if final.graph.output[index].name == built.low_name:
                del final.graph.output[index]
    record = {
        "source": src.name,
        "source_path": str(src.resolve()),
        "source_sha256": sha256_file(src),
        "external_data": [{"file": loc, "sha256": sha256_file(src.parent / loc)} for loc in external],
        "producer": f"{final.producer_name} {final.producer_version}".strip(),
        "opset": opset,
        "input": {"name": source_name, "shape": source_dims},
        "output": {"name": chosen, "kind": kind, "shape_at_probe": list(out_shape), "probe_input": [n0, 3, h0, w0]},
        "renamed": {source_name: INPUT_NAME, chosen: final_out},
        "dropped_outputs": dropped,
        "pruned_nodes": pruned,
        "made_dynamic": (["batch"] if fixed_batch and built.batch_dynamic else [])
        + [axis for axis, d in zip(("height", "width"), source_dims[2:]) if isinstance(d, int)],
        "batch": "dynamic" if built.batch_dynamic else source_dims[0],
        "resize": {
            "op": "Resize", "mode": "linear", "coordinate_transformation_mode": "half_pixel",
            "same_as": "torch.nn.functional.interpolate(mode='bilinear', align_corners=False)", "input_stride": stride,
        } if resize else None,
        "verified_shapes": verified,
        "max_abs_diff_vs_source": max_diff,
        "adopted_by": f"fcn-deploy {__version__}",
        "adopted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    meta = ModelMeta(
        arch=f"onnx:{src.stem}", num_classes=num_classes, class_names=class_names, palette=palette, mean=mean, std=std,
        min_size=min_size, max_size=max(1024, min_size), train_size=max(256, min_size), source_sha256=record["source_sha256"],
        adopted=record,
    )  # fmt: skip
    write_onnx_meta(final, meta, {"fcn_deploy.precision": "fp32", "fcn_deploy.adopted": json.dumps(record, sort_keys=True)})
    try:
        onnx.checker.check_model(final)
    except Exception as exc:  # ONNX Runtime ran it; stricter parsers may not
        log(f"note: the ONNX checker flags the graph ({_first_line(exc)}); ONNX Runtime runs it")
    check_size(final, out)
    with atomic_path(out) as tmp:
        onnx.save(final, str(tmp), save_as_external_data=False)

    if fixed_batch and built.batch_dynamic:
        log(f"batch was fixed at {source_dims[0]}: made dynamic")
    if fixed_hw:
        log(f"height and width were fixed at {source_dims[2]}x{source_dims[3]}: made dynamic")
    if resize:
        log(f"logits come out at 1/{stride} of the input size: added a bilinear Resize to the input size "
            "(half_pixel, i.e. align_corners=False), recorded in the metadata")  # fmt: skip
    sizes = ", ".join(f"{n}x{h}x{w}" for n, h, w in verified)
    log(f"verified in ONNX Runtime (CPU) at N x H x W {sizes}: output H x W == input H x W")
    log(f"matches the source at {n0}x3x{h0}x{w0}: max |Δ{'logit' if kind == 'logits' else 'mask'}| {max_diff:.3g}")
    norm = "ImageNet's, the default" if options.mean is None and options.std is None else "as given"
    log(f"{num_classes} classes; normalisation mean {mean} std {std} ({norm}); minimum input {min_size}x{min_size}")
    return {"onnx": str(out), "sha256": sha256_file(out), "meta": meta.to_dict(), "adopted": record}


class _BatchFailed(FcnDeployError):
    """Batch 2 failed on a graph whose batch was fixed: retry with the batch kept fixed."""


def _resolve_num_classes(src: Path, chosen: str, kind: str, shape, options: AdoptOptions) -> int:
    named = len(options.class_names) if options.class_names else None
    if options.num_classes is not None and named is not None and options.num_classes != named:
        raise FcnDeployError(f"--num-classes {options.num_classes} and --classes ({named} names) disagree; give one of them")
    given = options.num_classes if options.num_classes is not None else named
    flag = f"--num-classes {given}" if options.num_classes is not None else f"--classes ({named} names)"
    if kind == "mask":
        if given is None:
            raise FcnDeployError(f"{src}: output {chosen!r} is a class mask, which does not say how many classes there are; "
                                 "pass --num-classes N or --classes a,b,c")  # fmt: skip
        return given
    channels = int(shape[1])
    if given is not None and given != channels:
        raise FcnDeployError(
            f"{src}: {flag} disagrees with output {chosen!r}, which has {channels} channels (one per class); "
            f"pass --num-classes {channels}, or pick another output with --output"
        )
    if channels < 2:
        raise FcnDeployError(f"{src}: output {chosen!r} has {channels} channel; fcn-deploy needs one logit per class (at least 2)")
    return channels


def _resolve_classes(num_classes: int, options: AdoptOptions, log) -> tuple[list[str], list[list[int]]]:
    names = options.class_names or [f"class_{i}" for i in range(num_classes)]
    if not options.class_names:
        log(f"class names: class_0 .. class_{num_classes - 1} (pass --classes to name them)")
    palette = options.palette
    if palette is None:
        palette = default_palette(num_classes)
    elif len(palette) < num_classes:
        log(f"--palette gives {len(palette)} colours for {num_classes} classes: the rest use the VOC colour map")
        palette = palette + default_palette(num_classes)[len(palette):]
    elif len(palette) > num_classes:
        log(f"--palette gives {len(palette)} colours for {num_classes} classes: the first {num_classes} are used")
        palette = palette[:num_classes]
    return names, [list(map(int, c)) for c in palette]


def _verify(built: _Candidate, min_size: int | None, first: tuple[int, int, int], *, src, kind, num_classes, strides, mean, std,
            static, fixed_batch) -> tuple[list[list[int]], int, set[int], np.ndarray]:  # fmt: skip
    """Run the edited graph at the minimum size, odd sizes and batch 2; returns the shapes verified,
    the minimum size, the strides still consistent, and the output at the first probe size."""
    import onnx

    model = built.model
    if built.low_name:
        model.graph.output.append(onnx.helper.make_tensor_value_info(built.low_name, onnx.TensorProto.FLOAT, None))
    try:
        probe = _Probe(model.SerializeToString(), src, mean, std)
    finally:
        if built.low_name:
            del model.graph.output[-1]
    wanted = [OUTPUT_NAMES[kind]] + ([built.low_name] if built.low_name else [])
    strides = set(strides)

    def check(n: int, h: int, w: int) -> np.ndarray:
        nonlocal strides
        try:
            results = probe.run(n, h, w, wanted)
        except Exception as exc:
            if n > 1 and fixed_batch:
                raise _BatchFailed(_first_line(exc)) from exc
            raise FcnDeployError(_fails_at(src, static, n, h, w, _first_line(exc))) from exc
        value = results[wanted[0]]
        expected = (n, num_classes, h, w) if kind == "logits" else (n, h, w)
        if value.shape != expected:
            raise FcnDeployError(_fails_at(src, static, n, h, w, f"output {'x'.join(map(str, value.shape))}, expected "
                                           f"{'x'.join(map(str, expected))}"))  # fmt: skip
        if kind == "logits" and not np.isfinite(value).all():
            raise FcnDeployError(f"{src}: produces NaN or infinite logits at {n}x3x{h}x{w}; check the model's weights and normalisation")
        if kind == "mask" and value.size and (value.min() < 0 or value.max() >= num_classes):
            raise FcnDeployError(f"{src}: its mask holds class {int(value.max())} at {n}x3x{h}x{w}, beyond the "
                                 f"{num_classes} classes given; pass the right --num-classes")  # fmt: skip
        if built.low_name:
            low = results[built.low_name].shape[2:]
            strides = strides & stride_candidates((h, w), tuple(low))
            if not strides:
                raise FcnDeployError(_fails_at(src, static, n, h, w, f"logits come out at {low[0]}x{low[1]}, not a fixed fraction "
                                               "of the input as at the other sizes"))  # fmt: skip
        return value

    if min_size is None:
        tried = []
        for size in MIN_SIZE_CANDIDATES:
            try:
                check(1, size, size)
            except _BatchFailed:
                raise
            except FcnDeployError as exc:
                tried.append(str(exc))
                continue
            min_size = size
            break
        if min_size is None:
            raise FcnDeployError(tried[-1] + f" (also tried {', '.join(f'{s}x{s}' for s in MIN_SIZE_CANDIDATES)})")
    base = max(min_size, 64)
    sizes = [(min_size, min_size), (min_size + 1, 2 * min_size + 1), (base + 33, base + 65), (base + 67, base + 3)]
    shapes: list[list[int]] = []
    for h, w in dict.fromkeys(sizes):
        check(1, h, w)
        shapes.append([1, h, w])
    if built.batch_dynamic:
        check(2, *sizes[2])
        shapes.append([2, *sizes[2]])
    first_out = check(*first)
    if list(first) not in shapes:
        shapes.append(list(first))
    return shapes, min_size, strides, first_out


def _fails_at(src: Path, static, n: int, h: int, w: int, why: str) -> str:
    if static is not None:
        return (f"{src}: its input is fixed at {_shape_text(static)}, and the graph does not work at other sizes once height "
                f"and width are made dynamic (at {n}x3x{h}x{w}: {why}); re-export it with dynamic height and width, e.g. "
                "torch.onnx.export(..., dynamic_axes={'input': {0: 'N', 2: 'H', 3: 'W'}})")  # fmt: skip
    return (f"{src}: does not work at {n}x3x{h}x{w} ({why}); fcn-deploy runs any size from the minimum up: if only small "
            "sizes fail, pass a larger --min-size; if the model needs multiples of its stride, re-export it with the padding inside")  # fmt: skip



# --------------------------------------------------------------------------- inspect


def inspect_model(path: str | Path, run: bool = True) -> dict[str, Any]:
    """What ``path`` is (an ONNX file, an engine through its manifest, or a checkpoint) and whether it fits the toolkit."""
    from .backends import is_checkpoint

    path = require_file(path, "model", "pass an .onnx file, an engine or a .pt checkpoint")
    if has_manifest(path):
        return _inspect_engine(path)
    if is_checkpoint(path):
        return _inspect_checkpoint(path)
    return _inspect_onnx(path, run)


def _io_rows(values, role_of: Callable[[Any], str]) -> list[dict[str, Any]]:
    rows = []
    for value in values:
        dims = dims_of(value)
        rows.append({
            "name": value.name, "role": role_of(value), "dtype": dtype_of(value), "shape": dims,
            "dynamic": [i for i, d in enumerate(dims) if not isinstance(d, int)],
        })  # fmt: skip
    return rows


def _inspect_onnx(path: Path, run: bool) -> dict[str, Any]:
    model = read_onnx(path, load_data=False)
    external = external_data_files(model, path.parent)
    missing = [loc for loc in external if not (path.parent / loc).is_file()]
    props = read_onnx_props(model)
    meta = None
    if ONNX_META_KEY in props:
        meta = ModelMeta.from_json(props[ONNX_META_KEY], str(path)).to_dict()
    image, input_problems = _image_input(model)
    report: dict[str, Any] = {
        "path": str(path), "kind": "onnx", "bytes": path.stat().st_size, "sha256": sha256_file(path),
        "external_data": [{"file": loc, "bytes_needed": need, "present": loc not in missing} for loc, need in external.items()],
        "ir_version": model.ir_version, "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": _io_rows(graph_inputs(model), lambda v: "image" if image is not None and v.name == image.name and not input_problems else "-"),
        "outputs": _io_rows(model.graph.output, lambda v: "-"),
        "nodes": sum(1 for _ in _walk_nodes(model.graph)), "op_types": op_histogram(model), "parameters": parameter_count(model),
        "precision": props.get("fcn_deploy.precision", "fp32" if precision_problem(model) is None else "not fp32"),
        "metadata": meta, "probe": None,
    }  # fmt: skip
    problems = list(input_problems)
    notes: list[str] = []
    precision = precision_problem(model)
    if precision and meta is None:
        problems.append(f"{precision}: adopt the FP32 model (fcn-deploy makes the FP16 and INT8 graphs)")
    elif precision:
        notes.append(f"{precision}: build engines from, and validate against, the FP32 model")
    if missing:
        problems.append(f"its external data file(s) {', '.join(missing)} are missing: put them next to the model")
    chosen = kind = None
    if run and not missing and image is not None and not input_problems:
        n, h, w = _first_probe_size(dims_of(image))
        probe_meta = meta or {}
        report["probe"] = {"input": [n, 3, h, w]}
        try:
            results = _Probe(str(path), path, probe_meta.get("mean", IMAGENET_MEAN), probe_meta.get("std", IMAGENET_STD)).run(n, h, w)
        except Exception as exc:  # FcnDeployError from loading, ORT errors from running
            report["probe"]["error"] = _first_line(exc)
            problems.append(f"ONNX Runtime cannot run it on a {n}x3x{h}x{w} image ({_first_line(exc)})")
        else:
            shapes = {name: (str(v.dtype), tuple(v.shape)) for name, v in results.items()}
            report["probe"]["outputs"] = {name: {"dtype": d, "shape": list(s)} for name, (d, s) in shapes.items()}
            chosen, kind, note = _pick_output(shapes, (h, w), None)
            if chosen is None:
                problems.append(note)
            else:
                if note:
                    notes.append(note)
                shape = shapes[chosen][1]
                low = tuple(shape[2:]) if kind == "logits" else tuple(shape[1:])
                strides = stride_candidates((h, w), low)
                if not strides:
                    problems.append(f"output {chosen!r} is {'x'.join(map(str, shape))} for a {h}x{w} input: not the input size "
                                    "nor a fixed fraction of it")  # fmt: skip
                elif strides != {1}:
                    if kind == "mask":
                        problems.append(f"mask output {chosen!r} is at {low[0]}x{low[1]} for a {h}x{w} input; export the logits")
                    else:
                        notes.append(f"logits come out at {low[0]}x{low[1]} for a {h}x{w} input (1/{min(strides)}): adopt adds a "
                                     "bilinear resize to the input size")  # fmt: skip
                for row in report["outputs"]:
                    if row["name"] == chosen:
                        row["role"] = kind
    elif not run:
        notes.append("not run (--no-run): output shapes are as declared")
    if image is not None and not input_problems:
        fixed = [axis for axis, d in zip(("height", "width"), dims_of(image)[2:]) if isinstance(d, int)]
        if fixed:
            notes.append(f"input {image.name!r} has a fixed {' and '.join(fixed)}: adopt makes them dynamic if the graph allows it")
    names = {o.name for o in model.graph.output}
    if problems:
        verdict = "does not fit"
    elif meta is not None and names & {"logits", "mask"}:
        verdict = "ready"
    else:
        verdict = "adoptable"
        notes.insert(0, "missing: fcn-deploy metadata (classes, normalisation, minimum size)" if meta is None
                     else "missing: an output named logits or mask")  # fmt: skip
    next_step = None
    if verdict == "adoptable":
        parts = ["fcn-deploy", "adopt", str(path), "-o", str(path.with_name(path.stem + ".adopted.onnx"))]
        if kind == "logits" and report["probe"] and chosen:
            parts += ["--num-classes", str(report["probe"]["outputs"][chosen]["shape"][1])]
        if chosen and len(report["outputs"]) > 1:
            parts += ["--output", chosen]
        next_step = " ".join(parts)
    elif verdict == "ready" and report["precision"] == "fp32":
        next_step = f"fcn-deploy build-engine {path}"
    report["fit"] = {"verdict": verdict, "fits": verdict != "does not fit", "problems": problems, "notes": notes, "next": next_step}
    return report


def _inspect_engine(path: Path) -> dict[str, Any]:
    from .backends import open_engine

    manifest = read_manifest(path)
    report: dict[str, Any] = {
        "path": str(path), "kind": "engine", "backend": manifest.get("backend"), "precision": manifest.get("precision"),
        "profile": manifest.get("profile"), "files": manifest.get("files"), "versions": manifest.get("versions"),
        "built_at": manifest.get("built_at"), "source_onnx": manifest.get("source_onnx"), "metadata": manifest.get("meta"),
        "rebuild_command": manifest.get("rebuild_command"), "inputs": [], "outputs": [],
    }  # fmt: skip
    problems: list[str] = []
    if path.suffix.lower() == ".onnx":
        model = read_onnx(path, load_data=False)
        report.update(nodes=sum(1 for _ in _walk_nodes(model.graph)), op_types=op_histogram(model), parameters=parameter_count(model))
    elif path.suffix.lower() == ".xml":
        report.update(_openvino_graph_stats(path))
    try:
        with open_engine(path) as runner:
            for key, specs in (("inputs", runner.inputs), ("outputs", runner.outputs)):
                report[key] = [{"name": s.name, "role": "-", "dtype": s.dtype, "shape": list(s.shape),
                                "dynamic": [i for i, d in enumerate(s.shape) if not isinstance(d, int)]} for s in specs]  # fmt: skip
    except FcnDeployError as exc:
        problems.append(f"cannot open it here: {exc}")
    for row in report["inputs"][:1]:
        row["role"] = "image"
    for row in report["outputs"]:
        row["role"] = "logits" if "logits" in row["name"] else "mask" if "mask" in row["name"] else "-"
    adopted = (report["metadata"] or {}).get("adopted") or {}
    reference = adopted.get("source_path") or "CHECKPOINT.pt"
    report["fit"] = {"verdict": "ready" if not problems else "does not fit", "fits": not problems, "problems": problems,
                     "notes": [], "next": f"fcn-deploy validate {path} --reference {reference}" if not problems else None}  # fmt: skip
    return report


def _openvino_graph_stats(xml: Path) -> dict[str, Any]:
    try:
        import openvino as ov

        model = ov.Core().read_model(str(xml))
    except Exception:  # noqa: BLE001 - stats are optional; opening the engine reports the real problem
        return {}
    ops = collections.Counter(op.get_type_name() for op in model.get_ordered_ops())
    params = sum(
        math.prod(op.get_output_shape(0)) for op in model.get_ordered_ops()
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).is_real()
    )  # fmt: skip
    return {"nodes": sum(ops.values()), "op_types": dict(ops.most_common()), "parameters": params}


def _inspect_checkpoint(path: Path) -> dict[str, Any]:
    from .checkpoint import load_checkpoint
    from .models import count_parameters

    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    layers = collections.Counter(type(m).__name__ for m in model.modules() if not list(m.children()))
    meta = ckpt.meta
    return {
        "path": str(path), "kind": "checkpoint", "bytes": path.stat().st_size, "sha256": sha256_file(path),
        "inputs": [{"name": "image", "role": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"], "dynamic": [0, 2, 3]}],
        "outputs": [{"name": "logits", "role": "logits", "dtype": "float32", "shape": ["batch", meta.num_classes, "height", "width"],
                     "dynamic": [0, 2, 3]}],
        "nodes": sum(layers.values()), "op_types": dict(layers.most_common()), "parameters": count_parameters(model),
        "precision": "fp32", "metadata": meta.to_dict(),
        "fit": {"verdict": "ready", "fits": True, "problems": [], "notes": [], "next": f"fcn-deploy export {path}"},
    }  # fmt: skip


def print_inspection(console, report: dict[str, Any]) -> None:
    """Tables a person reads: I/O, what the file is, the op histogram, the metadata, and the verdict."""
    from rich.markup import escape
    from rich.table import Table

    kind = report["kind"]
    if kind == "onnx":
        external = "".join(f", external data {e['file']}" + ("" if e["present"] else " [red](missing)[/]") for e in report["external_data"])
        opsets = ", ".join(f"{d} {v}" for d, v in report["opsets"].items())
        head = (f"ONNX, IR {report['ir_version']}, opset {opsets}, producer {report['producer'] or '?'}, "
                f"{report['bytes'] / 1e6:.1f} MB{external}")  # fmt: skip
    elif kind == "engine":
        profile = report.get("profile") or {}
        head = (f"{report['backend']} {report['precision']} engine (manifest {Path(report['path']).name}.json), "
                f"profile N,H,W {profile.get('min')} .. {profile.get('max')}, opt {profile.get('opt')}, built {report.get('built_at')}")  # fmt: skip
    else:
        head = f"fcn-deploy checkpoint, {report['bytes'] / 1e6:.1f} MB"
    console.print(f"[bold]{escape(report['path'])}[/]: {escape(head)}")
    if "parameters" in report:
        console.print(f"{report['parameters'] / 1e6:.2f}M parameters, {report.get('nodes', '?')} {'layers' if kind == 'checkpoint' else 'nodes'}")
    table = Table(title="inputs and outputs")
    for column in ("", "role", "name", "dtype", "declared shape", "dynamic axes", "when run"):
        table.add_column(column)
    probed = (report.get("probe") or {}).get("outputs", {})
    for direction, rows in (("in", report["inputs"]), ("out", report["outputs"])):
        for row in rows:
            run_shape = probed.get(row["name"], {}).get("shape")
            if direction == "in" and row["role"] == "image" and report.get("probe"):
                run_shape = report["probe"].get("input")
            table.add_row(direction, row["role"], escape(row["name"]), row["dtype"], _shape_text(row["shape"]),
                          ", ".join(map(str, row["dynamic"])) or "none",
                          "x".join(map(str, run_shape)) if run_shape else "")  # fmt: skip
    console.print(table)
    if report.get("probe") and report["probe"].get("input"):
        console.print(f"run in ONNX Runtime on a {'x'.join(map(str, report['probe']['input']))} synthetic image"
                      + (f": [red]{escape(report['probe']['error'])}[/]" if report["probe"].get("error") else ""))  # fmt: skip
    if report.get("op_types"):
        ops = ", ".join(f"{op} {count}" for op, count in list(report["op_types"].items())[:16])
        more = len(report["op_types"]) - 16
        console.print(f"{'layers' if kind == 'checkpoint' else 'ops'}: {escape(ops)}" + (f", ... ({more} more types)" if more > 0 else ""))
    meta = report.get("metadata")
    if meta:
        names = ", ".join(meta["class_names"][:8]) + (", ..." if len(meta["class_names"]) > 8 else "")
        console.print(
            f"fcn-deploy metadata: {escape(meta['arch'])}, {meta['num_classes']} classes ({escape(names)}), mean {meta['mean']} "
            f"std {meta['std']}, min size {meta['min_size']}, precision {report.get('precision', '?')}"
        )
        if meta.get("adopted"):
            adopted = meta["adopted"]
            resize = " + bilinear resize" if adopted.get("resize") else ""
            console.print(f"adopted from {escape(adopted.get('source', '?'))} (input {adopted['input']['name']!r}, "
                          f"output {adopted['output']['name']!r}{resize})")  # fmt: skip
    elif kind == "onnx":
        console.print("fcn-deploy metadata: none")
    fit = report["fit"]
    colour = {"ready": "green", "adoptable": "yellow"}.get(fit["verdict"], "red")
    console.print(f"[{colour}]{fit['verdict']}[/]" + {
        "ready": ": fits the toolkit (one float image input N x 3 x H x W, logits N x C x H x W or a mask N x H x W)",
        "adoptable": ": the graph fits (one float image input N x 3 x H x W, per-pixel logits); `fcn-deploy adopt` adds the rest",
        "does not fit": ": fcn-deploy needs one float image input N x 3 x H x W and logits N x C x H x W or a mask N x H x W",
    }[fit["verdict"]])  # fmt: skip
    for problem in fit["problems"]:
        console.print(f"  [red]✗[/] {escape(problem)}")
    for note in fit["notes"]:
        console.print(f"  • {escape(note)}")
    if fit.get("next"):
        console.print(f"next: {escape(fit['next'])}")
