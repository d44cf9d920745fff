"""Edits of an OpenVINO model before it is compiled for one static shape (``OpenVinoRunner._request_for``).

Each edit keeps the engine's arithmetic and moves work the caller would do around the engine, or a
slow kernel, into one that runs faster on the same threads:

* :func:`with_matmul_upsampling`: the final bilinear resize of the logits as two matrix products;
* :func:`with_argmax_mask`: the mask as the graph's output instead of the float logits, taken
  before a final strided upsampling where there is one (:func:`phase_kernels`);
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


def phase_kernels(weights: np.ndarray, stride: int) -> np.ndarray:
    """The grouped-convolution kernels of the ``stride x stride`` output phases of a depthwise
    transposed convolution with ``weights`` (``C x 1 x k_h x k_w``): ``C x stride² x 1 x T_h x T_w``,
    ``T = ceil(k / stride)``, output channel ``r_h * stride + r_w`` of group ``c`` computing the
    outputs at rows ``r_h`` and columns ``r_w`` modulo the stride (before the transposed
    convolution's padding is cut off).

    A transposed convolution's output ``s q + r`` is ``sum_t x[q - t] w[s t + r]``: per phase ``r`` an
    ordinary convolution of the input with every ``s``-th tap, flipped, over ``T - 1`` pixels of zero
    padding before the input."""
    channels, _, k_h, k_w = weights.shape
    taps_h, taps_w = -(-k_h // stride), -(-k_w // stride)
    kernels = np.zeros((channels, stride * stride, 1, taps_h, taps_w), weights.dtype)
    for r_h in range(stride):
        for r_w in range(stride):
            for j_h in range(taps_h):
                for j_w in range(taps_w):
                    tap_h, tap_w = stride * (taps_h - 1 - j_h) + r_h, stride * (taps_w - 1 - j_w) + r_w
                    if tap_h < k_h and tap_w < k_w:
                        kernels[:, r_h * stride + r_w, 0, j_h, j_w] = weights[:, 0, tap_h, tap_w]
    return kernels


def _folded_twins(model) -> dict[str, Any]:
    """The ops of a constant-folded copy of ``model`` by friendly name: the values behind the shape
    arithmetic and reshaped weights of the original, which itself stays unfolded (its INT8 weights
    must reach the CPU plugin as the quantized pattern they are)."""
    from openvino.passes import ConstantFolding, Manager

    folded = model.clone()
    for op in folded.get_ops():  # the frontend keeps shape arithmetic from folding; the copy is only read
        info = op.get_rt_info()
        if "DisableConstantFolding_0" in info:
            del info["DisableConstantFolding_0"]
    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(folded)
    return {op.get_friendly_name(): op for op in folded.get_ops()}


def _constant(twins: dict[str, Any], output) -> np.ndarray | None:
    twin = twins.get(output.get_node().get_friendly_name())
    if twin is None:
        return None
    return twin.get_data() if twin.get_type_name() == "Constant" else None


def _widens(convert) -> bool:
    source, target = convert.input_value(0).get_element_type(), convert.get_output_element_type(0)
    return source.is_real() and target.is_real() and target.bitwidth >= source.bitwidth


#: From 2 up to this many classes the coarse argmax is a chain of elementwise comparisons
#: (:func:`_running_argmax`); otherwise one TopK.
ELEMENTWISE_ARGMAX_CLASSES = 64


def _running_argmax(planes: list, index_type: str):
    """The index of the largest of ``planes`` (plane ``c``: class ``c``'s output phases), the first
    maximum winning: for each class after the first, ``label = c where x_c > best``, ``best =
    max(best, x_c)``.

    The comparisons are exact, so the labels are TopK's; but they run elementwise in the layout the
    convolutions write (OpenVINO fuses the chain into one kernel), where a TopK over a class axis
    first needs the phases reordered to a planar 5-D tensor (its profiler: the reorder cost more
    than the TopK)."""
    import openvino.opset11 as ops

    dtype = np.int32 if index_type == "i32" else np.uint8
    best, labels = planes[0], ops.constant(np.array(0, dtype))
    for c, plane in enumerate(planes[1:], start=1):
        labels = ops.select(ops.greater(plane, best), ops.constant(np.array(c, dtype)), labels)
        if c < len(planes) - 1:
            best = ops.maximum(best, plane)
    return labels.output(0)


def _labels_before_upsampling(model, logits, index_type: str):
    """The argmax of ``logits`` taken before a final depthwise transposed convolution (FCN's
    learned upsampling), or None where the logits do not end in one.

    The transposed convolution with stride ``s`` becomes, per class, a convolution to its ``s²``
    output phases (:func:`phase_kernels`) at the coarse resolution (one grouped convolution where
    the argmax is a TopK); the argmax over the classes runs there, on ``s²``-times fewer pixels per
    plane, and only the labels are interleaved into the fine grid (DepthToSpace) and cut as the
    original cut its output.  The sums are the transposed convolution's own (in another order), so
    the labels are its logits' argmax; the spatial crops that follow it (Slice) are applied to the
    labels instead."""
    import openvino.opset11 as ops

    crops, node = [], logits.get_node()
    twins = None
    while node.get_type_name() in ("Slice", "Convert"):
        if node.get_type_name() == "Convert" and not _widens(node):
            return None  # a narrowing convert can make ties the wider logits do not have
        if node.get_type_name() == "Slice":
            twins = twins or _folded_twins(model)
            values = [_constant(twins, node.input_value(i)) for i in range(1, node.get_input_size())]
            if any(v is None for v in values) or len(values) != 4:
                return None
            axes = [int(a) % 4 for a in values[3]]
            if not set(axes) <= {2, 3}:
                return None
            crops.append((values[0], values[1], values[2], np.array(axes, np.int64)))
        node = node.input_value(0).get_node()
    if node.get_type_name() != "GroupConvolutionBackpropData" or node.get_input_size() != 2:
        return None
    attrs = node.get_attributes()
    strides = attrs["strides"]
    data, out = node.input_value(0).get_partial_shape(), node.output(0).get_partial_shape()
    if len(strides) != 2 or strides[0] != strides[1] or strides[0] < 2 or any(d != 1 for d in attrs["dilations"]):
        return None
    if data.is_dynamic or out.is_dynamic or attrs.get("auto_pad", "explicit") != "explicit":
        return None
    weights = _constant(twins or _folded_twins(model), node.input_value(1))
    (n, channels, height, width), (_, _, out_h, out_w) = data.to_shape(), out.to_shape()
    if weights is None or weights.ndim != 5 or weights.shape[:3] != (channels, 1, 1):
        return None
    stride, begin = strides[0], attrs["pads_begin"]
    kernels = phase_kernels(weights.reshape(channels, 1, *weights.shape[3:]), stride)
    taps_h, taps_w = kernels.shape[3:]
    rows, columns = -(-(begin[0] + out_h) // stride), -(-(begin[1] + out_w) // stride)  # phase-grid size the crop needs
    pads = ([taps_h - 1, taps_w - 1], [max(0, rows - height), max(0, columns - width)])
    if 2 <= channels <= ELEMENTWISE_ARGMAX_CLASSES:
        coarse = ops.split(node.input_value(0), np.int64(1), channels)  # the small coarse input, not the s²-times larger phases
        planes = [ops.convolution(coarse.output(c), ops.constant(kernels[c]), [1, 1], *pads, [1, 1]).output(0) for c in range(channels)]
        rows, columns = planes[0].get_partial_shape().to_shape()[2:]
        labels = _running_argmax(planes, index_type)
    else:
        phases = ops.group_convolution(node.input_value(0), ops.constant(kernels), [1, 1], *pads, [1, 1])
        rows, columns = phases.get_output_partial_shape(0).to_shape()[2:]
        per_class = ops.reshape(phases, np.array([n, channels, stride * stride, rows, columns], np.int64), False)
        top = ops.topk(per_class, np.int64(1), axis=1, mode="max", sort="none", index_element_type="i32")
        labels = top.output(1) if index_type == "i32" else ops.convert(top.output(1), index_type).output(0)
        labels = ops.reshape(labels, np.array([n, stride * stride, rows, columns], np.int64), False)
    fine = ops.depth_to_space(labels, "depth_first", stride)
    labels = ops.slice(fine, np.array(begin, np.int64), np.array([begin[0] + out_h, begin[1] + out_w], np.int64),
                       np.array([1, 1], np.int64), np.array([2, 3], np.int64))  # fmt: skip
    for start, stop, step, axes in reversed(crops):
        labels = ops.slice(labels, start, stop, step, axes)
    return ops.squeeze(labels, np.array([1], np.int64)).output(0)


def with_argmax_mask(model, logits_index: int, dtype: type) -> Any:
    """``model`` with its logits output replaced by their argmax over the classes (``uint8`` up to
    256 classes, else ``int32``), the first maximum winning as numpy's does.

    TopK with ``k=1`` and ``sort="none"``, faster than the logits output plus numpy's argmax, where
    ``sort="value", stable=True`` (documented to keep the first of equal values) costs most of the
    gain back (README, "Speed"); tests/test_backends.py holds the installed OpenVINO to numpy's
    choice on heavily tied logits.  Logits that end in a learned upsampling have their argmax taken
    at the coarse resolution (:func:`_labels_before_upsampling`)."""
    import openvino.opset11 as ops

    result = model.outputs[logits_index].get_node()
    index_type = "i32" if dtype is np.int32 else "u8"
    labels = _labels_before_upsampling(model, result.input_value(0), index_type)
    if labels is None:
        top = ops.topk(result.input_value(0), np.int64(1), axis=1, mode="max", sort="none", index_element_type="i32")
        labels = ops.squeeze(top.output(1), np.array([1], np.int64))
        labels = (labels if dtype is np.int32 else ops.convert(labels, "u8")).output(0)
    mask = ops.result(labels)
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
