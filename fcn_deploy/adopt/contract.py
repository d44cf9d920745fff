"""The toolkit's model contract: what a segmentation model must look like for every fcn-deploy command.

One float32 image input N x 3 x H x W, and per-pixel outputs at the input size: logits N x C x H x W
(float) or a class mask N x H x W (integer), named ``image`` and ``logits`` / ``mask``.  ``adopt``
brings a model to it, ``inspect`` says how far a model is from it, and the ONNX reference and
export-triton rely on it; the checks and names live here so that they agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..dtypes import FLOAT_TYPES
from ..errors import FcnDeployError
from ..onnxkit import dims_of, dtype_of, graph_inputs

#: The image input's name in an adopted (or exported) model.
INPUT_NAME = "image"
#: Output names by kind (what every runner and Triton config looks for).
OUTPUT_NAMES = {"logits": "logits", "mask": "mask"}
#: Output names preferred when several outputs could hold the logits (torchvision's main head is ``out``).
PREFERRED_OUTPUTS = ("logits", "out", "output")


def shape_text(shape) -> str:
    """``1 x 3 x ? x ?`` for declared dims (``?`` where unknown)."""
    return " x ".join("?" if d is None or d == "" else str(d) for d in shape) if shape else "?"


def image_input(model, input_name: str | None = None) -> tuple[Any, list[str]]:
    """The image input of an ONNX ``model`` (``input_name``, else its only fed input) and what keeps
    it from being one (sentences, empty when it fits; the input is None when there is none)."""
    fed = graph_inputs(model)
    if input_name is not None:
        chosen = next((i for i in model.graph.input if i.name == input_name), None)
        if chosen is None:
            listed = ", ".join(i.name for i in fed) or "none"
            return None, [f"has no input {input_name!r} (inputs: {listed}); name one of those as the image input"]
        others = [i for i in fed if i.name != input_name]
    else:
        if not fed:
            return None, ["has no inputs to feed; is it a complete model?"]
        chosen, others = fed[0], fed[1:]
    if others:
        listed = ", ".join(f"{i.name} ({dtype_of(i)} {shape_text(dims_of(i))})" for i in [chosen, *others])
        return chosen, [f"has {len(others) + 1} inputs ({listed}); fcn-deploy feeds one image (N x 3 x H x W): "
                        "re-export the model with the image as its only input"]  # fmt: skip
    dtype, dims = dtype_of(chosen), dims_of(chosen)
    shape = shape_text(dims)
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


def output_role(dtype: str, shape: tuple[int, ...], in_hw: tuple[int, int]) -> tuple[str | None, str]:
    """``("logits" | "mask" | None, why)`` for an output of ``shape`` (as run) at input ``in_hw``."""
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


def pick_output(shapes: dict[str, tuple[str, tuple[int, ...]]], in_hw: tuple[int, int], requested: str | None = None
                ) -> tuple[str, str, str]:  # fmt: skip
    """``(name, kind, note)`` of the output to keep, from the outputs' ``{name: (dtype, shape)}`` as run
    at input ``in_hw``; ``requested`` names it.  Raises FcnDeployError (about option ``output`` where
    naming one would help) when no output fits or several do."""
    listed = ", ".join(f"{name} ({'x'.join(map(str, s))} {d})" for name, (d, s) in shapes.items())
    roles = {name: output_role(d, s, in_hw) for name, (d, s) in shapes.items()}
    if requested is not None:
        if requested not in shapes:
            raise FcnDeployError(f"has no output {requested!r} (outputs: {listed}); choose one of those", options=("output",))
        kind, why = roles[requested]
        if kind is None:
            raise FcnDeployError(f"output {requested!r} {why}", options=("output",))
        return requested, kind, ""
    for kind in ("logits", "mask"):
        found = [name for name, (role, _) in roles.items() if role == kind]
        if len(found) == 1:
            return found[0], kind, ""
        if len(found) > 1:
            preferred = [name for name in found if name in PREFERRED_OUTPUTS]
            if len(preferred) == 1:
                others = ", ".join(n for n in found if n != preferred[0])
                note = f"kept output {preferred[0]!r} of {', '.join(found)} (name {others} as the output to keep it instead)"
                return preferred[0], kind, note
            raise FcnDeployError(f"has {len(found)} outputs that could be the {kind} ({listed}); choose the one to keep",
                                 options=("output",))  # fmt: skip
    whys = "; ".join(f"output {name!r} {why}" for name, (_, why) in roles.items())
    raise FcnDeployError(f"has no segmentation output: {whys}")


def spatial_size(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The H x W of a ``kind`` output of ``shape`` (logits N x C x H x W, a mask N x H x W)."""
    return tuple(shape[2:]) if kind == "logits" else tuple(shape[1:])


def stride_candidates(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> set[int]:
    """Output strides that explain ``out_hw`` at input ``in_hw`` (each side within one pixel of
    input / stride); ``{1}`` when the sizes are equal, empty when no stride explains them."""
    if tuple(out_hw) == tuple(in_hw):
        return {1}
    return {s for s in range(2, 65) if all(abs(o - i / s) <= 1 for i, o in zip(in_hw, out_hw))}
