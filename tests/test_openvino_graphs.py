"""The runner's graph edits: the final bilinear resize as two matrix products, and the argmax before a learned upsampling.

``bilinear_weights`` is held to ONNX Runtime's own ``Resize`` (an independent implementation of the
ONNX spec) on up- and downsampling, odd ratios and a one-pixel axis; the rewrite of an OpenVINO model
is held to OpenVINO's own Interpolate; and the runner's static graphs of the trained LR-ASPP (which
ends in such a resize) give the dynamic graph's masks.  ``phase_kernels`` is held to a transposed
convolution computed by its definition in numpy, and the masks of the rewritten FCN head to the
argmax of ONNX Runtime's logits, ties included.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcn_deploy.backends import open_runner
from fcn_deploy.backends import openvino_graphs as graphs
from fcn_deploy.cli import main
from fcn_deploy.data.images import preprocess
from fcn_deploy.data.synthetic import make_scene

FOREIGN = Path(__file__).parent / "data" / "lraspp-mnv3-w050.onnx"


def resize_model(mode: str = "linear", stride: int = 4, then_conv: bool = False) -> onnx.ModelProto:
    """A strided conv to 3 channels, then a resize back to the input's size: the end of a segmentation head.
    ``then_conv``: a 1x1 conv after the resize, so the resize is not the graph's output."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["scores"], strides=[stride, stride], kernel_shape=[stride, stride]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Resize", ["scores", "", "", "shape"], ["up" if then_conv else "logits"], mode=mode,
                         coordinate_transformation_mode="half_pixel"),
    ]  # fmt: skip
    inits = [numpy_helper.from_array(rng.normal(size=(3, 3, stride, stride)).astype(np.float32), "w")]
    if then_conv:
        nodes.append(helper.make_node("Conv", ["up", "w1"], ["logits"]))
        inits.append(numpy_helper.from_array(rng.normal(size=(3, 3, 1, 1)).astype(np.float32), "w1"))
    graph = helper.make_graph(nodes, "head", [x], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize(("size_in", "size_out"), [((8, 8), (64, 64)), ((7, 9), (50, 61)), ((64, 65), (512, 513)), ((20, 13), (9, 5)),
                                                   ((1, 4), (5, 4))])  # fmt: skip
def test_the_weights_give_onnx_runtimes_resize(size_in, size_out):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    sizes = numpy_helper.from_array(np.array([1, 2, *size_out], np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel")
    model = helper.make_model(helper.make_graph([node], "r", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [sizes]),
                              opset_imports=[helper.make_opsetid("", 19)], ir_version=9)  # fmt: skip
    data = np.random.default_rng(1).normal(size=(1, 2, *size_in)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": data})[0]
    rows, columns = graphs.bilinear_weights(size_in[0], size_out[0]), graphs.bilinear_weights(size_in[1], size_out[1])
    assert rows.shape == (size_out[0], size_in[0]) and columns.shape == (size_out[1], size_in[1])
    assert np.allclose(rows.sum(axis=1), 1) and (rows >= 0).all() and ((rows > 0).sum(axis=1) <= 2).all()  # two neighbours, a convex sum
    np.testing.assert_allclose(rows @ data.astype(np.float64) @ columns.T, expected, rtol=1e-5, atol=1e-5)


def compiled(model, shape: list[int]):
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def ov_model(onnx_model: onnx.ModelProto, shape: list[int]):
    import tempfile

    import openvino as ov

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "head.onnx"
        onnx.save(onnx_model, str(path))
        model = ov.convert_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): shape})
    return model


@pytest.mark.parametrize("shape", [[1, 3, 128, 96], [1, 3, 130, 97]])
def test_openvinos_output_resize_becomes_two_matrix_products_with_its_values(shape):
    pytest.importorskip("openvino")
    plain, rewritten = ov_model(resize_model(), shape), ov_model(resize_model(), shape)
    assert graphs.with_matmul_upsampling(rewritten) == 1
    ops = [op.get_type_name() for op in rewritten.get_ordered_ops()]
    assert "Interpolate" not in ops and ops.count("MatMul") == 2
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    expected, got = compiled(plain, shape)({0: x})[0], compiled(rewritten, shape)({0: x})[0]
    assert got.shape == expected.shape == tuple(shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.parametrize("case", ["nearest", "not the output", "over the cost cap"])
def test_other_resizes_are_left_to_openvino(case, monkeypatch):
    pytest.importorskip("openvino")
    model = ov_model(resize_model(mode="nearest" if case == "nearest" else "linear", then_conv=case == "not the output"), [1, 3, 64, 64])
    if case == "over the cost cap":
        monkeypatch.setattr(graphs, "MATMUL_RESIZE_MAX_MACS", 4)  # 16x16 -> 64x64 costs 16 + 16 multiply-adds per pixel
    assert graphs.with_matmul_upsampling(model) == 0
    assert "Interpolate" in [op.get_type_name() for op in model.get_ordered_ops()]


def test_the_runners_static_graphs_of_a_resize_head_give_the_dynamic_graphs_masks(tmp_path):
    """LR-ASPP ends in a bilinear resize of its class scores: the second call of a shape runs the
    static graph with the resize as matrix products, with the dynamic graph's masks and logits."""
    pytest.importorskip("openvino")
    src = tmp_path / "lraspp.onnx"
    shutil.copy(FOREIGN, src)
    engine = tmp_path / "lraspp.fp32.openvino.xml"
    assert (
        main(["build-engine", str(src), "-o", str(engine), "--backend", "openvino", "--min-shape", "64x64", "--max-shape", "256x256"]) == 0
    )
    with open_runner(engine) as runner:
        batch = preprocess(np.stack([make_scene(11, i, 120, 168)[0] for i in range(2)]), runner.meta.mean, runner.meta.std)
        dynamic = runner.infer(batch)
        static = runner.infer(batch)  # the second sight compiles the static graph
        masks = runner.infer(batch, need_logits=False), runner.infer(batch, need_logits=False)
        request = runner._static[(batch.shape, False, False)][0]
        ops = [op.get_rt_info()["layerType"].astype(str) for op in request.get_compiled_model().get_runtime_model().get_ordered_ops()]
    assert "MatMul" in ops or "FullyConnected" in ops
    assert sum(op == "Interpolate" for op in ops) == 1  # the head's inner resize stays; the output's became matrix products
    np.testing.assert_allclose(static.logits, dynamic.logits, rtol=1e-4, atol=1e-4)
    for mask in masks:
        np.testing.assert_array_equal(mask.mask, dynamic.mask)


# --- the argmax before a learned upsampling ---------------------------------------------------


def transposed_conv(x: np.ndarray, weights: np.ndarray, stride: int, begin: tuple[int, int], end: tuple[int, int],
                    extra: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """A depthwise transposed convolution by its definition: each input pixel scatters its kernel,
    scaled, onto the output at ``stride`` times its position; then the padding is cut off."""
    n, c, h, w = x.shape
    k_h, k_w = weights.shape[2:]
    full = np.zeros((n, c, (h - 1) * stride + k_h + extra[0], (w - 1) * stride + k_w + extra[1]))
    for i in range(h):
        for j in range(w):
            full[:, :, i * stride : i * stride + k_h, j * stride : j * stride + k_w] += x[:, :, i, j, None, None] * weights[None, :, 0]
    return full[:, :, begin[0] : full.shape[2] - end[0], begin[1] : full.shape[3] - end[1]]


def upsampling_head(classes: int, stride: int, kernel: tuple[int, int], pads: list[int], output_padding: list[int], crop: int = 0,
                    group: int | None = None, then: str = "") -> onnx.ModelProto:  # fmt: skip
    """An FCN's end as the exporter writes it: a strided conv to class scores, a transposed conv
    back up (``group=classes``: per class), then a Slice to the input's size from ``crop``.  Integer
    weights: every sum is exact in float32, so any order of the sums gives the same logits, ties too.
    ``then``: ``"channel slice"`` drops the last class after the crop (a crop that is not spatial),
    ``"narrowing cast"`` casts the logits to float16 (which can tie what float32 told apart)."""
    rng = np.random.default_rng(4)
    group = classes if group is None else group
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["scores"], strides=[stride, stride], kernel_shape=[stride, stride]),
        helper.make_node("ConvTranspose", ["scores", "up"], ["full"], group=group, strides=[stride, stride], kernel_shape=list(kernel),
                         pads=pads, output_padding=output_padding),
        helper.make_node("Shape", ["x"], ["shape"], start=2),
        helper.make_node("Add", ["shape", "crop"], ["ends"]),
        helper.make_node("Slice", ["full", "starts", "ends", "axes"], ["cropped" if then else "logits"]),
    ]  # fmt: skip
    inits = [
        numpy_helper.from_array(rng.integers(-2, 3, (classes, 3, stride, stride)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.integers(-2, 3, (classes, classes // group, *kernel)).astype(np.float32), "up"),
        numpy_helper.from_array(np.array([crop, crop], np.int64), "starts"),
        numpy_helper.from_array(np.array([crop, crop], np.int64), "crop"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
    ]
    if then == "narrowing cast":
        nodes.append(helper.make_node("Cast", ["cropped"], ["logits"], to=TensorProto.FLOAT16))
    if then == "channel slice":
        nodes.append(helper.make_node("Slice", ["cropped", "c0", "c1", "c_axis"], ["logits"]))
        inits += [numpy_helper.from_array(np.array([v], np.int64), name) for name, v in (("c0", 0), ("c1", classes - 1), ("c_axis", 1))]
    out_type = TensorProto.FLOAT16 if then == "narrowing cast" else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "fcn-head", [x], [helper.make_tensor_value_info("logits", out_type, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


@pytest.mark.parametrize(("stride", "kernel", "pads", "output_padding"), [
    (8, (15, 15), [7, 7, 7, 7], [7, 7]),  # the default model's final upsampling
    (2, (3, 3), [1, 1, 1, 1], [1, 1]),  # its first
    (4, (8, 5), [2, 1, 3, 0], [0, 2]),  # uneven kernel and pads
    (3, (2, 2), [0, 0, 0, 0], [0, 0]),  # fewer taps than the stride
])  # fmt: skip
def test_phase_kernels_compute_the_transposed_convolution(stride, kernel, pads, output_padding):
    """Per phase, a convolution over the coarse input, interleaved: the definition's output."""
    rng = np.random.default_rng(5)
    weights = rng.normal(size=(3, 1, *kernel))
    x = rng.normal(size=(2, 3, 6, 5))
    kernels = graphs.phase_kernels(weights, stride)
    taps = kernels.shape[3:]
    assert kernels.shape == (3, stride * stride, 1, -(-kernel[0] // stride), -(-kernel[1] // stride))
    padded = np.pad(x, ((0, 0), (0, 0), (taps[0] - 1, taps[0] - 1), (taps[1] - 1, taps[1] - 1)))
    rows, columns = padded.shape[2] - taps[0] + 1, padded.shape[3] - taps[1] + 1
    fine = np.zeros((2, 3, rows * stride, columns * stride))
    for r_h in range(stride):
        for r_w in range(stride):
            kernel_rw = kernels[:, r_h * stride + r_w, 0]
            for q_h in range(rows):
                for q_w in range(columns):
                    window = padded[:, :, q_h : q_h + taps[0], q_w : q_w + taps[1]]
                    fine[:, :, q_h * stride + r_h, q_w * stride + r_w] = (window * kernel_rw[None]).sum(axis=(2, 3))
    expected = transposed_conv(x, weights, stride, (pads[0], pads[1]), (pads[2], pads[3]), tuple(output_padding))
    got = fine[:, :, pads[0] : pads[0] + expected.shape[2], pads[1] : pads[1] + expected.shape[3]]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("stride", "kernel", "pads", "output_padding", "crop", "shape"), [
    (8, (15, 15), [7, 7, 7, 7], [7, 7], 0, [2, 3, 96, 128]),
    (8, (15, 15), [7, 7, 7, 7], [7, 7], 0, [1, 3, 67, 133]),  # sizes that are no multiple of the stride
    (2, (3, 3), [1, 1, 1, 1], [1, 1], 0, [1, 3, 31, 20]),
    (4, (8, 5), [2, 1, 3, 0], [0, 2], 3, [1, 3, 64, 48]),  # uneven, and a crop that starts inside
])  # fmt: skip
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
@pytest.mark.parametrize("argmax", ["elementwise", "topk"])
def test_the_mask_of_an_upsampling_head_is_taken_before_the_upsampling_with_onnx_runtimes_labels(stride, kernel, pads, output_padding,
                                                                                                crop, shape, dtype, argmax, monkeypatch):  # fmt: skip
    """The rewrite leaves no transposed convolution in the graph and gives exactly the argmax of
    ONNX Runtime's logits of the same ONNX (first maximum on ties, which integer weights make common),
    through the elementwise chain of a few classes and through the TopK of many."""
    pytest.importorskip("openvino")
    if argmax == "topk":
        monkeypatch.setattr(graphs, "ELEMENTWISE_ARGMAX_CLASSES", 3)  # as if 4 classes were many
    head = upsampling_head(4, stride, kernel, pads, output_padding, crop)
    model = ov_model(head, shape)
    masked = graphs.with_argmax_mask(model, 0, dtype)
    ops = [op.get_type_name() for op in masked.get_ordered_ops()]
    assert "DepthToSpace" in ops and "GroupConvolutionBackpropData" not in ops
    assert ("TopK" in ops) == (argmax == "topk") and (ops.count("Select") == 3) == (argmax == "elementwise")
    x = np.random.default_rng(6).integers(-2, 3, shape).astype(np.float32)
    logits = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x})[0]
    mask = compiled(masked, shape)({0: x})[0]
    assert mask.dtype == dtype and mask.shape == (shape[0], *logits.shape[2:])
    assert (np.sort(logits, axis=1)[:, -1] == np.sort(logits, axis=1)[:, -2]).mean() > 0.002  # ties are there to be broken
    np.testing.assert_array_equal(mask, logits.argmax(axis=1))


@pytest.mark.parametrize("case", ["dense transposed conv", "stride 1", "channel slice after the crop", "narrowing cast"])
def test_other_ends_keep_the_argmax_after_the_logits(case):
    pytest.importorskip("openvino")
    stride = 1 if case == "stride 1" else 4
    head = upsampling_head(4, stride, (4, 4) if stride > 1 else (3, 3), [0, 0, 0, 0] if stride > 1 else [1, 1, 1, 1], [0, 0],
                           group=1 if case == "dense transposed conv" else None,
                           then={"channel slice after the crop": "channel slice", "narrowing cast": "narrowing cast"}.get(case, ""))  # fmt: skip
    shape = [1, 3, 32, 40]
    masked = graphs.with_argmax_mask(ov_model(head, shape), 0, np.uint8)
    ops = [op.get_type_name() for op in masked.get_ordered_ops()]
    assert "DepthToSpace" not in ops and "TopK" in ops
    x = np.random.default_rng(7).integers(-2, 3, shape).astype(np.float32)
    logits = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x})[0]
    np.testing.assert_array_equal(compiled(masked, shape)({0: x})[0], logits.argmax(axis=1))
