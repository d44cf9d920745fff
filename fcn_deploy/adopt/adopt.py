"""``adopt``: a segmentation ONNX exported elsewhere, written as a copy every fcn-deploy command takes.

It changes only what the toolkit's contract (:mod:`.contract`) needs, and records each change in
the metadata (:attr:`ModelMeta.adopted`):

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

Nothing is written until ONNX Runtime has run the result at several sizes (:mod:`.verify`) and its
logits match the source's at the size the source was probed at.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..backends.base import upsample_bilinear
from ..errors import CheckFailed, FcnDeployError, first_line, require_file
from ..events import SILENT, Listener
from ..fileio import sha256_file
from ..meta import IMAGENET_MEAN, IMAGENET_STD, ONNX_META_KEY, ModelMeta, default_palette, read_onnx_props, write_onnx_meta
from ..onnxkit import (
    check_size,
    dims_of,
    external_data_files,
    load_external_data,
    ort_message,
    parameter_count,
    precision_problem,
    read_onnx,
    save_onnx,
)  # fmt: skip
from ..onnxkit.graph import default_opset
from .contract import INPUT_NAME, image_input, pick_output, shape_text, spatial_size, stride_candidates
from .edit import candidate, keep_one_output
from .probe import Probe, first_probe_size
from .verify import BatchFailed, verify

#: How far adopted logits may differ from the source's (relative to max(1, max |logit|)): the same graph in the same runtime.
MATCH_TOLERANCE = 1e-3
#: The listener task adopt's runs advance.
TASK = "adopt"


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


def adopt(src: str | Path, out: str | Path, options: AdoptOptions | None = None, *, listener: Listener = SILENT) -> dict[str, Any]:
    """Write ``src`` (a foreign FP32 segmentation ONNX) to ``out`` with fcn-deploy metadata, after proving it runs.

    Returns the report (what was changed, the sizes verified, the metadata).  Each ONNX Runtime run
    advances the listener's ``adopt`` task; what was changed is said in notes.
    """
    options = options or AdoptOptions()
    src = require_file(src, "ONNX model", "pass the .onnx file to adopt")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise FcnDeployError(f"{out}: give a file name ending in .onnx", options=("out",))
    if out.exists() and out.resolve() == src.resolve():
        raise FcnDeployError(f"{out}: would overwrite the source model; choose another output path", options=("out",))
    if options.min_size is not None and options.min_size < 2:
        raise FcnDeployError(f"minimum size {options.min_size}: give at least 2 pixels", options=("min_size",))
    listener.start(TASK, description=f"adopting {src.name}", unit="runs")
    try:
        return _adopt(src, out, options, listener)
    finally:
        listener.finish(TASK)


def _adopt(src: Path, out: Path, options: AdoptOptions, listener: Listener) -> dict[str, Any]:
    import onnx

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
        listener.note(f"{src.name} already carries fcn-deploy metadata; adopt replaces it", level="note")
    image, problems = image_input(model, options.input_name)
    if problems:
        raise FcnDeployError(f"{src}: {problems[0]}", options=("input_name",) if image is None and options.input_name else ())
    source_name, source_dims = image.name, dims_of(image)
    opset = default_opset(model)
    listener.note(
        f"source: {src.name} ({f'{model.producer_name} {model.producer_version}'.strip() or 'unknown producer'}, opset {opset}, "
        f"{parameter_count(model) / 1e6:.2f}M parameters{', external data ' + ', '.join(external) if external else ''})"
    )

    # 1. The source as it is, at its own size: which output holds the logits, and at what resolution.
    n0, h0, w0 = first_probe_size(source_dims)
    source = Probe(model.SerializeToString(), src, mean, std)
    listener.advance(TASK, 1, description=f"adopting {src.name}: the source at {n0}x3x{h0}x{w0}")
    try:
        source_out = source.run(n0, h0, w0)
    except Exception as exc:
        raise FcnDeployError(f"{src}: ONNX Runtime cannot run it on a {n0}x3x{h0}x{w0} image ({ort_message(exc)})") from exc
    del source
    shapes = {name: (str(value.dtype), tuple(value.shape)) for name, value in source_out.items()}
    try:
        chosen, kind, note = pick_output(shapes, (h0, w0), options.output)
    except FcnDeployError as exc:
        raise FcnDeployError(f"{src}: {exc}", options=exc.options) from None
    if note:
        listener.note(note)
    out_shape = shapes[chosen][1]
    num_classes = _resolve_num_classes(src, chosen, kind, out_shape, options)
    class_names, palette = _resolve_classes(num_classes, options, listener)
    low_hw = spatial_size(kind, out_shape)
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
    listener.note(f"image input {source_name!r} ({shape_text(source_dims)}); {kind} output {chosen!r}: "
                  f"{'x'.join(map(str, out_shape))} at {n0}x3x{h0}x{w0}")  # fmt: skip

    # 2. The edits: names, dropped outputs, dynamic dims, resize.
    renamed = keep_one_output(model, source_name, chosen, kind, resize)
    if renamed.dropped:
        listener.note(f"dropped output(s) {', '.join(renamed.dropped)} and the {renamed.pruned} node(s) only they needed")
    base_bytes = model.SerializeToString()
    del model
    fixed_hw = [d for d in source_dims[2:] if isinstance(d, int)]
    fixed_batch = isinstance(source_dims[0], int)

    # 3. Proof: ONNX Runtime at several sizes (and batch 2), output H x W == input H x W.
    context = dict(src=src, kind=kind, num_classes=num_classes, strides=strides, mean=mean, std=std,
                   static=source_dims if fixed_hw else None, fixed_batch=fixed_batch, listener=listener, task=TASK)  # fmt: skip
    built = candidate(base_bytes, renamed, kind, num_classes, source_dims, relax_batch=True)
    try:
        verified, min_size, strides, got = verify(built, options.min_size, (n0, h0, w0), **context)
    except BatchFailed as exc:
        listener.note(f"batch stays fixed at {source_dims[0]}: the graph does not run at batch 2 ({exc})", level="note")
        built = candidate(base_bytes, renamed, kind, num_classes, source_dims, relax_batch=False)
        verified, min_size, strides, got = verify(built, options.min_size, (n0, h0, w0), **context)
    stride = min(strides) if resize else 1

    # 4. The adopted graph computes what the source computes (after the same resize, done independently).
    expected = source_out[chosen]
    if resize:
        expected = upsample_bilinear(expected, h0, w0)
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
    record = {
        "source": src.name,
        "source_path": str(src.resolve()),
        "source_sha256": sha256_file(src),
        "external_data": [{"file": loc, "sha256": sha256_file(src.parent / loc)} for loc in external],
        "producer": f"{final.producer_name} {final.producer_version}".strip(),
        "opset": opset,
        "input": {"name": source_name, "shape": source_dims},
        "output": {"name": chosen, "kind": kind, "shape_at_probe": list(out_shape), "probe_input": [n0, 3, h0, w0]},
        "renamed": {source_name: INPUT_NAME, chosen: renamed.final_out},
        "dropped_outputs": renamed.dropped,
        "pruned_nodes": renamed.pruned,
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
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime ran it; stricter parsers may not
        listener.note(f"the ONNX checker flags the graph ({first_line(exc)}); ONNX Runtime runs it", level="note")
    save_onnx(final, out)

    if fixed_batch and built.batch_dynamic:
        listener.note(f"batch was fixed at {source_dims[0]}: made dynamic")
    if fixed_hw:
        listener.note(f"height and width were fixed at {source_dims[2]}x{source_dims[3]}: made dynamic")
    if resize:
        listener.note(f"logits come out at 1/{stride} of the input size: added a bilinear Resize to the input size "
                      "(half_pixel, i.e. align_corners=False), recorded in the metadata")  # fmt: skip
    sizes = ", ".join(f"{n}x{h}x{w}" for n, h, w in verified)
    listener.note(f"verified in ONNX Runtime (CPU) at N x H x W {sizes}: output H x W == input H x W")
    listener.note(f"matches the source at {n0}x3x{h0}x{w0}: max |Δ{'logit' if kind == 'logits' else 'mask'}| {max_diff:.3g}")
    norm = "ImageNet's, the default" if options.mean is None and options.std is None else "as given"
    listener.note(f"{num_classes} classes; normalisation mean {mean} std {std} ({norm}); minimum input {min_size}x{min_size}")
    return {"onnx": str(out), "sha256": sha256_file(out), "meta": meta.to_dict(), "adopted": record}


def _resolve_num_classes(src: Path, chosen: str, kind: str, shape, options: AdoptOptions) -> int:
    named = len(options.class_names) if options.class_names else None
    if options.num_classes is not None and named is not None and options.num_classes != named:
        raise FcnDeployError(f"{options.num_classes} classes and {named} class names disagree; give one of them",
                             options=("num_classes", "classes"))  # fmt: skip
    given = options.num_classes if options.num_classes is not None else named
    given_as = ("num_classes",) if options.num_classes is not None else ("classes",)
    if kind == "mask":
        if given is None:
            raise FcnDeployError(f"{src}: output {chosen!r} is a class mask, which does not say how many classes there are; "
                                 "give the number of classes or their names", options=("num_classes", "classes"))  # fmt: skip
        return given
    channels = int(shape[1])
    if given is not None and given != channels:
        what = f"{given} classes" if options.num_classes is not None else f"{given} class names"
        raise FcnDeployError(
            f"{src}: {what} given, and output {chosen!r} has {channels} channels (one per class); "
            f"give {channels} classes, or choose another output",
            options=given_as,
        )
    if channels < 2:
        raise FcnDeployError(f"{src}: output {chosen!r} has {channels} channel; fcn-deploy needs one logit per class (at least 2)")
    return channels


def _resolve_classes(num_classes: int, options: AdoptOptions, listener: Listener) -> tuple[list[str], list[list[int]]]:
    names = options.class_names or [f"class_{i}" for i in range(num_classes)]
    if not options.class_names:
        listener.note(f"class names: class_0 .. class_{num_classes - 1} (no class names given)")
    palette = options.palette
    if palette is None:
        palette = default_palette(num_classes)
    elif len(palette) < num_classes:
        listener.note(f"the palette gives {len(palette)} colours for {num_classes} classes: the rest use the VOC colour map")
        palette = palette + default_palette(num_classes)[len(palette) :]
    elif len(palette) > num_classes:
        listener.note(f"the palette gives {len(palette)} colours for {num_classes} classes: the first {num_classes} are used")
        palette = palette[:num_classes]
    return names, [list(map(int, c)) for c in palette]
