"""Bring your own model: ``inspect`` any model file, and ``adopt`` a segmentation ONNX exported elsewhere.

Most people arrive with an ONNX from torchvision, mmsegmentation or their own training code.
:func:`adopt` writes a copy that every fcn-deploy command takes (build-engine on every backend,
validate, infer, benchmark); :func:`inspect_model` says what a file is and whether it fits.

* :mod:`.contract`: the model contract shared by adopt, inspect, the ONNX reference and export-triton
  (the image input, output roles, the names adopt gives, output strides);
* :mod:`.probe`: running a model in ONNX Runtime on synthetic scenes;
* :mod:`.edit`: the graph edits; :mod:`.verify`: the proof at many sizes; :mod:`.adopt`: the two together;
* :mod:`.inspect`: the report and verdict of ``fcn-deploy inspect``.
"""

from .adopt import AdoptOptions, adopt
from .contract import (
    INPUT_NAME,
    OUTPUT_NAMES,
    image_input,
    output_role,
    pick_output,
    shape_text,
    spatial_size,
    stride_candidates,
)  # fmt: skip
from .inspect import inspect_model, next_step

__all__ = [
    "INPUT_NAME", "OUTPUT_NAMES", "AdoptOptions", "adopt", "image_input", "inspect_model", "next_step", "output_role",
    "pick_output", "shape_text", "spatial_size", "stride_candidates",
]  # fmt: skip
