"""Helpers shared by several test modules (test files never import each other)."""

from __future__ import annotations

from pathlib import Path

import onnx

from fcn_deploy.validation import Thresholds

#: The report tests' thresholds: 99 % pooled agreement, a 95 % floor per size, no confident-pixel gate.
THRESHOLDS = Thresholds(pixel_agreement=0.99, size_floor=0.95, confident_agreement=None, confidence_margin=0.5)


def perturbed_copy(src: Path, dst: Path, pick, edit) -> Path:
    """A copy of the ONNX ``src`` at ``dst`` with the first initializer ``pick`` accepts replaced by ``edit`` of it."""
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if pick(i))
    init.CopyFrom(onnx.numpy_helper.from_array(edit(onnx.numpy_helper.to_array(init)), init.name))
    onnx.save(model, str(dst))
    return dst
