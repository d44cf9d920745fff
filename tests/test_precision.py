"""The exact graphs TensorRT compiles, validated on CPU at the product thresholds, and FP16 arithmetic.

* The INT8 graph with TensorRT's encoding (``--int8-target tensorrt``: symmetric int8, zero points
  0, float biases, ModelOpt's placement) and the FP16 graph, run by ONNX Runtime, must pass the
  documented INT8 and FP16 thresholds at many sizes, extreme aspect ratios included.
* FP16 arithmetic itself (the checkpoint in torch float16) must pass the FP16 thresholds: they are
  set from that measurement (README, "FP16").
* Graphs TensorRT's ONNX parser would refuse are refused by the TensorRT backend before its builder
  runs, naming the node (a pure-ONNX check, so it runs here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcn_deploy.backends import Profile
from fcn_deploy.backends.base import CompileOptions
from fcn_deploy.backends.onnxruntime import OnnxRuntimeRunner
from fcn_deploy.backends.tensorrt import TensorRTBackend, qdq_problems
from fcn_deploy.backends.torch import TorchRunner
from fcn_deploy.cli import main
from fcn_deploy.data.calibration import generate_default_calibration
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.meta import read_onnx_meta
from fcn_deploy.precision import apply_precision
from fcn_deploy.precision.qdq import residual_add_inputs
from fcn_deploy.validation import DEFAULT_THRESHOLDS, spread_sizes, validate

#: Sizes inside the tiny model's 32..256 profile: min, max, odd, prime, off-32, extreme aspects, random.
SIZES = spread_sizes(Profile((1, 32, 32), (1, 96, 96), (8, 256, 256)), random_sizes=4, seed=0) + [(67, 250), (250, 67)]


@pytest.fixture(scope="module")
def graphs(tiny_onnx, tiny_calibration, tmp_path_factory) -> dict[str, Path]:
    """TensorRT's INT8 graph, ONNX Runtime's INT8 graph and the FP16 graph of the tiny model."""
    out = tmp_path_factory.mktemp("precision")
    paths = {"int8-tensorrt": out / "tiny.int8-tensorrt.onnx", "int8-onnxruntime": out / "tiny.int8-onnxruntime.onnx",
             "fp16": out / "tiny.fp16.onnx"}  # fmt: skip
    quiet = dict(calib_dir=tiny_calibration)
    apply_precision(tiny_onnx, paths["int8-tensorrt"], "int8", int8_encoding="int8-symmetric", **quiet)
    apply_precision(tiny_onnx, paths["int8-onnxruntime"], "int8", int8_encoding="uint8-asymmetric", **quiet)
    apply_precision(tiny_onnx, paths["fp16"], "fp16", **quiet)
    return paths


@pytest.mark.parametrize(("graph", "precision"), [("int8-tensorrt", "int8"), ("int8-onnxruntime", "int8"), ("fp16", "fp16")])
def test_precision_graphs_pass_the_product_thresholds_at_many_sizes(graphs, tiny_checkpoint, graph, precision):
    runner = OnnxRuntimeRunner(graphs[graph], providers="cpu")
    report = validate(runner, TorchRunner(tiny_checkpoint), SIZES, DEFAULT_THRESHOLDS[precision])
    figures = [(c.height, c.width, round(c.pixel_agreement, 5)) for c in report.cases]
    assert report.passed, (report.failures, report.failing_sizes, figures)
    assert len(report.cases) >= 14 and any(max(h, w) / min(h, w) >= 3.7 for h, w, _ in figures)
    # ONNX Runtime computes an FP16 graph in FP32 on a CPU: the report must say so.
    assert report.arithmetic == ("fp16-emulated" if precision == "fp16" else precision)
    assert {c.arithmetic for c in report.cases} == {report.arithmetic}


def test_tensorrt_int8_graph_is_what_the_parser_takes_and_fuses_residual_adds(graphs):
    trt_graph, ort_graph = onnx.load(str(graphs["int8-tensorrt"])), onnx.load(str(graphs["int8-onnxruntime"]))
    assert qdq_problems(trt_graph) == []
    produced_by = {o: n for n in trt_graph.graph.node for o in n.output}
    # Q/DQ on the inputs of quantized ops only: no conv output is quantized unless an int8 op reads it.
    for conv in (n for n in trt_graph.graph.node if n.op_type == "Conv"):
        assert produced_by[conv.input[0]].op_type == "DequantizeLinear", conv.name
    # Every residual Add reads its conv branch in float (TensorRT fuses that conv and the Add) and the
    # residual through Q/DQ; the ONNX Runtime graph keeps both inputs quantized (ORT fuses QLinearConv).
    nodes = {n.name: n for n in trt_graph.graph.node}
    fused = residual_add_inputs(onnx.load(str(graphs["int8-tensorrt"])))
    assert len(fused) >= 8  # ResNet-18's eight blocks at least
    for name, index in fused:
        add = nodes[name]
        assert produced_by[add.input[index]].op_type != "DequantizeLinear", name
        assert produced_by[add.input[1 - index]].op_type == "DequantizeLinear", name
    ort_produced_by = {o: n for n in ort_graph.graph.node for o in n.output}
    for add in (n for n in ort_graph.graph.node if n.op_type == "Add" and n.name in dict(fused)):
        assert all(ort_produced_by[i].op_type == "DequantizeLinear" for i in add.input), add.name


def test_fp16_arithmetic_passes_the_fp16_thresholds(tiny_checkpoint, tmp_path, capsys):
    """The thresholds are set from FP16 arithmetic: the checkpoint in torch float16 must meet them."""
    fp16, fp32 = TorchRunner(tiny_checkpoint, precision="fp16"), TorchRunner(tiny_checkpoint)
    report = validate(fp16, fp32, SIZES, DEFAULT_THRESHOLDS["fp16"])
    assert report.passed, (report.failures, report.failing_sizes)
    assert report.arithmetic == "fp16"
    assert max(c.max_abs_logit_diff for c in report.cases) > 1e-4, "float16 arithmetic must change the logits"
    # The same through the command line, with the JSON report.
    path = tmp_path / "fp16.json"
    code = main(["validate", str(tiny_checkpoint), "-r", str(tiny_checkpoint), "--emulate-fp16", "--sizes", "32x32,97x129,45x160",
                 "--report", str(path)])  # fmt: skip
    assert code == 0, capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["passed"] and data["precision"] == "fp16" and data["arithmetic"] == "fp16"
    assert data["thresholds"]["confidence_margin"] == DEFAULT_THRESHOLDS["fp16"].confidence_margin


def test_emulate_fp16_needs_a_checkpoint(tiny_onnx, tiny_checkpoint, capsys):
    assert main(["validate", str(tiny_onnx), "-r", str(tiny_checkpoint), "--emulate-fp16"]) == 2
    assert "--emulate-fp16: " in (err := capsys.readouterr().err) and "FP16 emulation runs a PyTorch checkpoint in float16" in err


def test_histogram_calibration_needs_more_images(tiny_onnx, tmp_path):
    folder = tmp_path / "calib"
    generate_default_calibration(folder, count=10, size=64)
    for method in ("percentile", "entropy"):
        with pytest.raises(FcnDeployError, match=rf"has 10 usable images, and calibration method {method} needs at least 32"):
            apply_precision(tiny_onnx, tmp_path / "x.onnx", "int8", calib_dir=folder, calib_method=method)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(FcnDeployError, match="unknown calibration method 'kl'; choose one of minmax, entropy, percentile"):
        apply_precision(tiny_onnx, tmp_path / "x.onnx", "int8", calib_dir=folder, calib_method="kl")


# --------------------------------------------------------------------------- graphs TensorRT refuses


def qdq_graph(tmp_path: Path, name: str, *, activation_type=TensorProto.INT8, zero_point=0, act_scale=(0.1,), bias_type=None) -> Path:
    """Conv(DQ(Q(image)), DQ(int8 weights)[, DQ(bias)]): one hand-made Q/DQ graph per defect."""
    qtype = helper.tensor_dtype_to_np_dtype(activation_type)
    inits = [
        numpy_helper.from_array(np.array(act_scale, np.float32), "act_scale"),
        numpy_helper.from_array(np.full(len(act_scale), zero_point, qtype), "act_zp"),
        numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    axis = [] if len(act_scale) == 1 else [helper.make_attribute("axis", 1)]
    q = helper.make_node("QuantizeLinear", ["image", "act_scale", "act_zp"], ["image_q"], name="quant_image")
    q.attribute.extend(axis)
    dq = helper.make_node("DequantizeLinear", ["image_q", "act_scale", "act_zp"], ["image_dq"], name="dequant_image")
    dq.attribute.extend(axis)
    wdq = helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dequant_weight", axis=0)
    conv_inputs = ["image_dq", "w"]
    nodes = [q, dq, wdq]
    if bias_type is not None:
        inits += [numpy_helper.from_array(np.zeros(4, helper.tensor_dtype_to_np_dtype(bias_type)), "b_q"),
                  numpy_helper.from_array(np.full(4, 0.001, np.float32), "b_scale")]  # fmt: skip
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], name="dequant_conv_bias", axis=0))
        conv_inputs.append("b")
    nodes.append(helper.make_node("Conv", conv_inputs, ["logits"], name="conv", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4, "h", "w"])], inits,
    )  # fmt: skip
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


@pytest.mark.parametrize(
    ("defect", "options", "message"),
    [
        ("int32-bias", dict(bias_type=TensorProto.INT32), r"DequantizeLinear node dequant_conv_bias: an int32 bias Q/DQ"),
        ("zero-point", dict(zero_point=3), r"QuantizeLinear node quant_image: non-zero zero point"),
        ("per-channel", dict(act_scale=(0.1, 0.2, 0.3)), r"QuantizeLinear node quant_image: per-channel scales on an activation"),
        ("uint8", dict(activation_type=TensorProto.UINT8), r"QuantizeLinear node quant_image: uint8 quantization"),
    ],
)
def test_tensorrt_backend_refuses_graphs_its_parser_would_refuse(tmp_path, tiny_onnx, defect, options, message):
    bad = qdq_graph(tmp_path, defect, **options)
    assert qdq_problems(onnx.load(str(bad)))
    meta = read_onnx_meta(onnx.load(str(tiny_onnx)))
    # On this machine TensorRT is not installed: reaching the builder would fail with "not installed" instead.
    with pytest.raises(FcnDeployError, match=rf"{bad.name}: TensorRT's ONNX parser would refuse .*{message}.*INT8 target tensorrt"):
        TensorRTBackend().compile(bad, tmp_path / "x.plan", Profile(*[(1, 32, 32)] * 3), meta, CompileOptions(precision="int8"))
    assert not (tmp_path / "x.plan").exists()


def test_a_clean_graph_reaches_the_builder(tmp_path, tiny_onnx, monkeypatch):
    """The clean Q/DQ graph passes the check: the backend goes on to import TensorRT (absent here)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    good = qdq_graph(tmp_path, "good")
    assert qdq_problems(onnx.load(str(good))) == []
    meta = read_onnx_meta(onnx.load(str(tiny_onnx)))
    with pytest.raises(FcnDeployError, match="TensorRT is not installed"):
        TensorRTBackend().compile(good, tmp_path / "x.plan", Profile(*[(1, 32, 32)] * 3), meta, CompileOptions(precision="int8"))
