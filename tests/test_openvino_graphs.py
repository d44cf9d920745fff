"""The final bilinear resize as two matrix products: against ONNX Runtime's Resize, and through the runner.

``bilinear_weights`` is held to ONNX Runtime's own ``Resize`` (an independent implementation of the
ONNX spec) on up- and downsampling, odd ratios and a one-pixel axis; the rewrite of an OpenVINO model
is held to OpenVINO's own Interpolate; and the runner's static graphs of the trained LR-ASPP (which
ends in such a resize) give the dynamic graph's masks.
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
