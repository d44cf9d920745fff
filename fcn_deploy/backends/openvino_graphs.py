"""Edits of an OpenVINO model before it is compiled for one static shape (``OpenVinoRunner._request_for``).

Each edit keeps the engine's arithmetic and moves work the caller would do around the engine, or a
slow kernel, into one that runs faster on the same threads:

* :func:`with_matmul_upsampling`: the final bilinear resize of the logits as two matrix products;
* :func:`with_argmax_mask`: the mask as the graph's output instead of the float logits;
* :func:`with_image_input`: uint8 images in, normalised inside the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.images import normalisation

#: The most multiply-adds per output pixel the matrix form of a resize may cost (it multiplies by
#: zeros too, so it grows with the input's side); past it the resize is left to OpenVINO's kernel.
MATMUL_RESIZE_MAX_MACS = 256


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """The ``n_out x n_in`` matrix of ONNX's linear ``Resize`` along one axis with ``half_pixel``
    coordinates and a size (not a scale) given: row ``i`` holds the weights of output ``i``'s two
    neighbours, the source coordinate clamped to the input as ONNX Runtime and OpenVINO clamp it."""
    scale = np.float32(n_out) / np.float32(n_in)
    source = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) / scale - np.float32(0.5)
    source = np.clip(source, np.float32(0), np.float32(n_in - 1))
    return np.maximum(np.float32(0), np.float32(1) - np.abs(source[:, None] - np.arange(n_in, dtype=np.float32)[None, :]))


def _is_plain_bilinear(node) -> bool:
    attrs = node.get_attributes()
    return (
        attrs.get("mode") == "linear_onnx" and attrs.get("coordinate_transformation_mode") in ("half_pixel", "pytorch_half_pixel")
        and attrs.get("shape_calculation_mode") == "sizes" and not attrs.get("antialias")
        and not any(attrs.get("pads_begin", [])) and not any(attrs.get("pads_end", []))
    )  # fmt: skip


def with_matmul_upsampling(model) -> int:
    """``model`` (static shapes) with each bilinear resize that produces a graph output computed as
    ``A_h @ X @ A_w.T`` (:func:`bilinear_weights`); returns how many were rewritten.

    Segmentation heads (LR-ASPP, DeepLab) end in a resize of a few class channels to the image
    size.  OpenVINO runs it channels-last, a poor fit for SIMD at five or twenty channels, and then
    reorders the result for output; two small FP32 matrix products do the same sums (each output
    is its two neighbours' weighted sum; the other products are exact zeros) in planar layout.
    Only the resize of the output is rewritten, and only while its multiply-adds per output pixel
    stay under :data:`MATMUL_RESIZE_MAX_MACS`."""
    import openvino.opset11 as ops

    rewritten = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Interpolate" or not _is_plain_bilinear(node):
            continue
        if not any(t.get_node().get_type_name() == "Result" for t in node.output(0).get_target_inputs()):
            continue
        source, target = node.input_value(0).get_partial_shape(), node.output(0).get_partial_shape()
        if source.is_dynamic or target.is_dynamic or len(source) != 4:
            continue
        (n, c, h_in, w_in), (n_out, c_out, h_out, w_out) = source.to_shape(), target.to_shape()
        if (n, c) != (n_out, c_out):
            continue
        rows_first = h_out * h_in * w_in + h_out * w_in * w_out
        columns_first = h_in * w_in * w_out + h_out * h_in * w_out
        if min(rows_first, columns_first) > MATMUL_RESIZE_MAX_MACS * h_out * w_out:
            continue
        rows, columns = ops.constant(bilinear_weights(h_in, h_out)), ops.constant(bilinear_weights(w_in, w_out))
        x = node.input_value(0)
        if rows_first <= columns_first:
            y = ops.matmul(ops.matmul(rows, x, False, False), columns, False, True)
        else:
            y = ops.matmul(rows, ops.matmul(x, columns, False, True), False, False)
        for target_input in list(node.output(0).get_target_inputs()):
            target_input.replace_source_output(y.output(0))
        rewritten += 1
    return rewritten


def with_argmax_mask(model, logits_index: int, dtype: type) -> Any:
    """``model`` with its logits output replaced by their argmax over the classes (``uint8`` up to
    256 classes, else ``int32``), the first maximum winning as numpy's does.

    TopK with ``k=1`` and ``sort="none"``, faster than the logits output plus numpy's argmax, where
    ``sort="value", stable=True`` (documented to keep the first of equal values) costs most of the
    gain back (README, "Speed"); tests/test_backends.py holds the installed OpenVINO to numpy's
    choice on heavily tied logits."""
    import openvino.opset11 as ops

    result = model.outputs[logits_index].get_node()
    top = ops.topk(result.input_value(0), np.int64(1), axis=1, mode="max", sort="none", index_element_type="i32")
    labels = ops.squeeze(top.output(1), np.array([1], np.int64))
    mask = ops.result(labels if dtype is np.int32 else ops.convert(labels, "u8"))
    model.add_results([mask])
    model.remove_result(result)
    mask.output(0).get_tensor().set_names({"mask"})
    return model


def with_image_input(model, mean, std) -> Any:
    """``model`` taking ``uint8 NxHxWx3`` RGB images: converted to float32, multiplied by
    ``1 / (255 std)`` and less ``mean / std`` per channel, then laid out as NCHW, the float32
    operations :func:`fcn_deploy.data.images.preprocess` runs in numpy, here on the engine's threads."""
    import openvino as ov
    import openvino.opset11 as ops
    from openvino.preprocess import PrePostProcessor

    scale, shift = (value.reshape(1, 1, 1, 3) for value in normalisation(mean, std))
    steps = PrePostProcessor(model)
    image = steps.input(0)
    image.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    image.model().set_layout(ov.Layout("NCHW"))
    image.preprocess().convert_element_type(ov.Type.f32).custom(
        lambda node: ops.subtract(ops.multiply(node, ops.constant(scale)), ops.constant(shift)).output(0)
    )
    return steps.build()
