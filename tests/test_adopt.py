"""Bring your own model: torchvision segmentation ONNX files this project did not write, through
inspect -> adopt -> build-engine (FP32/FP16/INT8, every CPU backend) -> validate against the original
ONNX -> infer; graph edits (low-resolution logits, static shapes, a mask output) on small hand-made
graphs; and every kind of bad input through the CLI.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fcn_deploy.artefacts import manifest_path
from fcn_deploy.backends import open_reference, open_runner
from fcn_deploy.backends.base import upsample_bilinear
from fcn_deploy.cli import main
from fcn_deploy.data.calibration import generate_default_calibration
from fcn_deploy.data.images import preprocess
from fcn_deploy.data.synthetic import make_scene, panning_frames
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.events import Recorder
from fcn_deploy.media import write_video
from fcn_deploy.meta import IMAGENET_MEAN, IMAGENET_STD, read_onnx_meta
from fcn_deploy.validation import DEFAULT_THRESHOLDS

from helpers import random_checkpoint

NUM_CLASSES = 21
#: Odd validation sizes (small: every model runs them on two CPU cores in well under a second).
SIZES = "33x65,75x97,121x47"
#: (exporter, outputs): one dynamo export (the default of torch 2.14: weights in an external .onnx.data file),
#: the TorchScript exporter for the others (an unnamed output; torchvision's `out` + `aux`).
TORCHVISION = {
    "deeplabv3_mobilenet_v3_large": {"dynamo": True, "aux": False, "output": "out"},
    "lraspp_mobilenet_v3_large": {"dynamo": False, "aux": False, "output": None},
    "fcn_resnet50": {"dynamo": False, "aux": True, "output": "out"},
}
BACKENDS = ("onnxruntime", "openvino")
#: The heaviest model (fcn_resnet50, 33M parameters) runs its video on the FP32 engine it already built.
HEAVY = {"fcn_resnet50"}


def randomised_torchvision(name: str, aux: bool) -> torch.nn.Module:
    """A torchvision model with random weights (nothing downloads) whose masks follow the image.

    Conv weights keep torchvision's random init.  BatchNorm gets a random affine and running
    statistics measured on synthetic scenes (as a trained network's would be), residual branches
    start small (their last BatchNorm scaled by 0.1, in the spirit of torchvision's
    ``zero_init_residual``, without all-zero weight tensors no trained model has), and the classifier
    is scaled so that logits spread like a trained model's (std 4).  Measured here: with BatchNorm's
    default or purely random statistics LR-ASPP gave one class everywhere and DeepLabV3's logits
    stayed below 0.4; with measured statistics and full-strength random residual stacks, FP16
    rounding flipped 1-2 % of the pixels.
    """
    from torchvision.models import segmentation
    from torchvision.models.mobilenetv3 import InvertedResidual
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=aux or None)
    generator = torch.Generator().manual_seed(1)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
        bn.bias.data.copy_(torch.randn(bn.num_features, generator=generator) * 0.2)
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches seen
    for block in model.modules():
        if isinstance(block, Bottleneck) or (isinstance(block, InvertedResidual) and block.use_res_connect):
            last = [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
            last.weight.data.mul_(0.1)
            last.bias.data.mul_(0.1)
    scenes = torch.from_numpy(preprocess(np.stack([make_scene(11, i, 64, 64)[0] for i in range(8)]), IMAGENET_MEAN, IMAGENET_STD))
    model.train()
    with torch.no_grad():
        model(scenes)
    model.eval()
    head = model.classifier
    classifiers = [head.low_classifier, head.high_classifier] if hasattr(head, "low_classifier") else [head[-1]]
    with torch.no_grad():
        scale = 4.0 / float(model(scenes)["out"].std())
        for conv in classifiers:
            conv.weight.mul_(scale)
            conv.bias.mul_(scale)
    return model


class Zoo:
    """Foreign models, adopted models and engines, each made once per test module (on first use)."""

    def __init__(self, root: Path):
        self.root = root
        self.calib = root / "calib"
        generate_default_calibration(self.calib, count=8, size=96)  # 8: the fewest calibration accepts
        self._cache: dict[tuple, Path] = {}
        self.torch_parameters: dict[str, int] = {}

    def _once(self, key: tuple, make) -> Path:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def source(self, name: str) -> Path:
        """Plain torch.onnx.export: input `input`, dynamic N/H/W, no metadata."""

        def make() -> Path:
            spec = TORCHVISION[name]
            folder = self.root / name
            folder.mkdir()
            path = folder / f"{name}.onnx"
            model = randomised_torchvision(name, spec["aux"])
            self.torch_parameters[name] = sum(p.numel() for p in model.parameters())
            example = torch.from_numpy(preprocess(make_scene(12, 0, 96, 128)[0], IMAGENET_MEAN, IMAGENET_STD))
            outputs = (["out", "aux"] if spec["aux"] else ["out"]) if spec["output"] else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kwargs = {} if spec["dynamo"] else {"dynamo": False}  # dynamo is torch 2.14's default
                torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=outputs,
                                  dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}}, **kwargs)  # fmt: skip
            return path

        return self._once(("source", name), make)

    def adopted(self, name: str) -> Path:
        def make() -> Path:
            source = self.source(name)
            out = source.with_name("adopted.onnx")
            args = [
                "adopt",
                str(source),
                "-o",
                str(out),
                "--num-classes",
                str(NUM_CLASSES),
                "--report",
                str(out.with_name("adopt-report.json")),
            ]
            if TORCHVISION[name]["aux"]:
                args += ["--output", "out"]
            assert main(args) == 0
            return out

        return self._once(("adopted", name), make)

    def engine(self, name: str, backend: str, precision: str) -> Path:
        def make() -> Path:
            adopted = self.adopted(name)
            out = adopted.with_name(f"adopted.{precision}.{backend}")
            out = out.with_suffix(".xml") if backend == "openvino" else out.with_name(out.name + ".onnx")
            args = ["build-engine", str(adopted), "-o", str(out), "--backend", backend, "--calib", str(self.calib)]
            args += [] if precision == "fp32" else [f"--{precision}"]
            if precision == "int8":  # these tests judge the plain INT8 engine of random weights (see below), not a repaired one
                args += ["--int8-repair", "off"]
            assert main(args) == 0
            return out

        return self._once(("engine", name, backend, precision), make)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


def validate(engine: Path, reference: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    report = tmp_path / f"{engine.name}.validate.json"
    code = main(["validate", str(engine), "--reference", str(reference), "--sizes", SIZES, "--report", str(report), *extra])
    return code, json.loads(report.read_text())


# --------------------------------------------------------------------------- torchvision models, end to end


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_inspect_sees_a_foreign_model_that_fits(zoo, name, tmp_path, capsys):
    source = zoo.source(name)
    report_path = tmp_path / "inspect.json"
    assert main(["inspect", str(source), "--report", str(report_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["kind"] == "onnx" and report["metadata"] is None
    assert report["fit"]["verdict"] == "adoptable" and report["fit"]["problems"] == []
    assert "adoptable" in out and "fcn-deploy adopt" in out
    (image,) = report["inputs"]
    assert (image["name"], image["role"], image["dtype"], image["shape"][1]) == ("input", "image", "float32", 3)
    assert image["dynamic"] == [0, 2, 3]
    logits = [o for o in report["outputs"] if o["role"] == "logits"]
    assert len(logits) == 1 and report["probe"]["outputs"][logits[0]["name"]]["shape"] == [1, NUM_CLASSES, 97, 129]
    assert len(report["outputs"]) == (2 if TORCHVISION[name]["aux"] else 1)
    assert report["op_types"]["Conv"] > 40 and report["opsets"]["ai.onnx"] >= 17
    torch_params = zoo.torch_parameters[name]
    assert 0.9 * torch_params < report["parameters"] <= torch_params  # the exporter folds BatchNorm into the convs
    assert bool(report["external_data"]) == TORCHVISION[name]["dynamo"]


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_adopt_writes_one_self_describing_file(zoo, name):
    source, adopted = zoo.source(name), zoo.adopted(name)
    model = onnx.load(str(adopted), load_external_data=False)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)  # one file
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    meta = read_onnx_meta(model)
    record = meta.adopted
    assert meta.num_classes == NUM_CLASSES and meta.min_size == 32 and meta.mean == list(IMAGENET_MEAN)
    assert record["input"]["name"] == "input" and record["output"]["name"] == (TORCHVISION[name]["output"] or record["output"]["name"])
    assert record["source_sha256"] == meta.source_sha256 and record["resize"] is None  # torchvision resizes itself
    assert record["dropped_outputs"] == (["aux"] if TORCHVISION[name]["aux"] else [])
    if TORCHVISION[name]["aux"]:
        assert record["pruned_nodes"] > 0
    assert [e["file"] for e in record["external_data"]] == ([source.name + ".data"] if TORCHVISION[name]["dynamo"] else [])
    assert {tuple(s) for s in record["verified_shapes"]} >= {(1, 32, 32), (2, 97, 129)}
    assert record["max_abs_diff_vs_source"] <= 1e-4
    # The adopted graph computes what the source computes, in ONNX Runtime on an image-like input.
    import onnxruntime as ort

    x = preprocess(make_scene(4, 0, 75, 97)[0], IMAGENET_MEAN, IMAGENET_STD)
    ref = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(adopted), providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})[0]
    expected = ref.run([record["output"]["name"]], {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert len(np.unique(expected.argmax(1))) >= 3, "random weights should give masks that are not constant"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_fp32_engines_validate_against_the_original_onnx(zoo, name, backend, tmp_path):
    code, report = validate(zoo.engine(name, backend, "fp32"), zoo.source(name), tmp_path)
    assert code == 0 and report["passed"], report["failures"]
    assert report["summary"]["pixel_agreement"] >= 0.9999
    assert [(c["height"], c["width"]) for c in report["cases"]] == [(33, 65), (75, 97), (121, 47)]
    assert all(c["max_abs_logit_diff"] is not None for c in report["cases"])


#: Random weights leave near-ties that 16-bit rounding flips, which trained models (confident almost
#: everywhere) do not have: measured on these three models at SIZES, FP16 in ONNX Runtime agreed on
#: 99.44-99.87 % of the pixels, under the product's 99.9 %, while every confident pixel agreed; the
#: OpenVINO FP16 engine (FP16 graph at f32 on CPUs without FP16 units) agreed on 99.90-99.93 %.  The
#: product's confident-pixel criterion stays; the agreement floors are what random weights allow,
#: still far above what a broken layer gives (the INT8 case below that validate catches: 40 %).
FP16_FLOORS = ["--min-agreement", "0.99", "--min-size-agreement", "0.99"]


def reduced_precision_models() -> list:
    """fcn_resnet50 (33M parameters) runs its FP16 and INT8 cases behind the ``slow`` marker: they take
    most of this module's time, and the two mobile models exercise the same code paths."""
    return [pytest.param(name, marks=[pytest.mark.slow] if name in HEAVY else []) for name in TORCHVISION]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", reduced_precision_models())
def test_fp16_engines_validate_against_the_original_onnx(zoo, name, backend, tmp_path):
    engine = zoo.engine(name, backend, "fp16")
    code, report = validate(engine, zoo.source(name), tmp_path, *FP16_FLOORS)
    summary = report["summary"]
    print(f"FP16 ({report['arithmetic']}) {name} {backend} vs the FP32 ONNX: agreement {summary['pixel_agreement']:.5f}, "
          f"confident {summary['confident_agreement']:.5f}, lowest per size {summary['min_pixel_agreement']:.4f}")  # fmt: skip
    assert code == 0 and report["passed"], report["failures"] or report["failing_sizes"]
    assert report["arithmetic"] in ("fp16", "fp16-emulated")  # never silently coarser than FP16
    assert report["thresholds"]["confidence_margin"] == DEFAULT_THRESHOLDS["fp16"].confidence_margin
    assert summary["confident_agreement"] == 1.0  # the product criterion, unchanged


def int8_case(name: str, backend: str):
    marks = [pytest.mark.slow] if name in HEAVY else []
    if (name, backend) == ("lraspp_mobilenet_v3_large", "openvino"):
        marks.append(pytest.mark.xfail(strict=True, reason=(
            "OpenVINO 2026.4 runs LR-ASPP's INT8 Q/DQ graph far from ONNX Runtime running the same graph "
            "(measured: 40 % vs 82 % agreement with FP32, 44 % vs 90 % on confident pixels; its conv outputs drift "
            "from the first blocks on and the SE gates diverge): validate catches it")))  # fmt: skip
    return pytest.param(name, backend, marks=marks)


@pytest.mark.parametrize(("name", "backend"), [int8_case(n, b) for n in TORCHVISION for b in BACKENDS])
def test_int8_engines_against_the_original_onnx(zoo, name, backend, tmp_path):
    """INT8 on random weights: the product thresholds (99 % agreement, mean IU 0.97 against the
    reference) assume a trained model.  Random activations are spread evenly over their range, so
    8-bit steps move every logit, and random classifiers separate classes by small margins: measured
    here, the INT8 engines agreed with FP32 on 70-82 % of the pixels (75-90 % of the confident ones).
    What is meaningful: the engine runs at every size, beats a constant mask of the reference's most
    common class, agrees on most pixels where FP32 is confident, and the build's own INT8 check (on
    other sizes and inputs) reached the same verdict as validate."""
    engine = zoo.engine(name, backend, "int8")
    code, report = validate(engine, zoo.source(name), tmp_path)
    summary = report["summary"]
    print(f"INT8 {name} {backend} vs the FP32 ONNX: agreement {summary['pixel_agreement']:.4f}, confident "
          f"{summary['confident_agreement']:.4f}, mIU vs reference {summary['mean_iu_vs_reference']:.3f}")  # fmt: skip
    assert len(report["cases"]) == 3 and code == (0 if report["passed"] else 1)
    check = json.loads(manifest_path(engine).read_text())["int8_check"]
    assert check["repair"] == "off" and check["before"]["passed"] == report["passed"], (check["before"], report["failures"])
    confusion = np.array(report["confusion"])  # rows: the reference's classes
    most_common_share = confusion.sum(1).max() / confusion.sum()
    assert sum(c["confident"] for c in report["cases"]) > 0.3 * confusion.sum()
    assert summary["pixel_agreement"] >= most_common_share + 0.1
    assert summary["confident_agreement"] >= 0.7


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_infer_on_a_short_video(zoo, name, tmp_path):
    video = tmp_path / "pan.mp4"
    write_video(video, (frame for frame, _ in panning_frames(9, 6, 72, 96)), fps=12)
    engine = zoo.engine(name, "openvino" if name in HEAVY else "onnxruntime", "fp32" if name in HEAVY else "int8")
    summary_path = tmp_path / "infer.json"
    assert main(["infer", str(video), "--engine", str(engine), "-o", str(tmp_path / "overlay.mp4"), "--report", str(summary_path)]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 6 and (tmp_path / "overlay.mp4").stat().st_size > 0


def test_inspect_engines_and_checkpoints(zoo, tmp_path, capsys):
    for backend in BACKENDS:
        engine = zoo.engine("lraspp_mobilenet_v3_large", backend, "fp32")
        assert main(["inspect", str(engine), "--report", str(tmp_path / "engine.json")]) == 0
        report = json.loads((tmp_path / "engine.json").read_text())
        assert (report["kind"], report["backend"], report["precision"], report["fit"]["verdict"]) == ("engine", backend, "fp32", "ready")
        assert [(r["name"], r["role"]) for r in report["outputs"]] == [("logits", "logits")]
        assert report["inputs"][0]["role"] == "image" and report["op_types"] and report["parameters"] > 1e6
        assert report["metadata"]["adopted"]["source"] == "lraspp_mobilenet_v3_large.onnx"
        assert report["backend_facts"]["name"] == backend and report["backend_facts"]["usable"]
        assert report["fit"]["next"].startswith(f"fcn-deploy validate {engine} --reference ")
    checkpoint = random_checkpoint(tmp_path / "r18.pt", "fcn8s-resnet18", {"width": 0.25})
    assert main(["inspect", str(checkpoint), "--report", str(tmp_path / "ckpt.json")]) == 0
    report = json.loads((tmp_path / "ckpt.json").read_text())
    assert (report["kind"], report["fit"]["verdict"], report["metadata"]["arch"]) == ("checkpoint", "ready", "fcn8s-resnet18")
    assert report["outputs"][0]["shape"] == ["batch", 4, "height", "width"] and report["op_types"]["Conv2d"] > 10
    assert "ready" in capsys.readouterr().out


def test_benchmark_times_adopted_engines_without_a_checkpoint(zoo, tmp_path, capsys):
    engine = zoo.engine("lraspp_mobilenet_v3_large", "onnxruntime", "fp32")
    report = tmp_path / "bench.json"
    assert main(["benchmark", str(engine), "--sizes", "65x97", "--warmup", "0", "--iters", "2", "--report", str(report)]) == 0
    assert "no PyTorch checkpoint" in capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["baseline"] is None and [r["backend"] for r in data["results"]] == ["onnxruntime"]
    assert data["results"][0]["median_ms"] > 0 and data["results"][0]["speedup_vs_torch"] is None


def test_an_adopted_model_runs_as_an_onnx_file_too(zoo):
    """Every command that takes an ONNX takes the adopted one (infer on images, the Python API)."""
    with open_runner(zoo.adopted("lraspp_mobilenet_v3_large")) as runner:
        x = preprocess(make_scene(3, 1, 67, 101)[0], IMAGENET_MEAN, IMAGENET_STD)
        prediction = runner.infer(x)
    assert prediction.logits.shape == (1, NUM_CLASSES, 67, 101) and prediction.mask.shape == (1, 67, 101)


# --------------------------------------------------------------------------- graph edits, on small hand-made graphs


def conv_model(path: Path, dims=("N", 3, "H", "W"), classes: int = 5, stride: int = 1, tail=None, name="input") -> Path:
    """A small segmentation graph: 3x3 conv -> ReLU -> conv to ``classes`` logits (``stride`` > 1:
    logits at 1/stride of the input).  ``tail(graph, logits_name) -> output name`` appends nodes."""
    rng = np.random.default_rng(0)
    k = stride if stride > 1 else 3
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, k, k)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (classes, 8, 1, 1)).astype(np.float32), "w2")
    conv1 = helper.make_node("Conv", [name, "w1"], ["c1"], pads=[0] * 4 if stride > 1 else [1] * 4, strides=[stride, stride])
    nodes = [conv1, helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "w2"], ["scores"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))], [], [w1, w2])
    out = tail(graph, "scores") if tail else "scores"
    elem = TensorProto.INT64 if out.startswith("argmax") else TensorProto.FLOAT
    graph.output.append(helper.make_tensor_value_info(out, elem, None))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_low_resolution_logits_get_a_bilinear_resize(tmp_path, capsys):
    source = conv_model(tmp_path / "stride4.onnx", stride=4)
    report = tmp_path / "inspect.json"
    assert main(["inspect", str(source), "--report", str(report)]) == 0
    assert any("adopt adds a bilinear resize" in n for n in json.loads(report.read_text())["fit"]["notes"])
    adopted = tmp_path / "adopted.onnx"
    assert main(["adopt", str(source), "-o", str(adopted), "--classes", "a,b,c,d,e", "--palette", "255,0,0;0,255,0"]) == 0
    out = capsys.readouterr().out
    assert "1/4 of the input size" in out and "bilinear Resize" in out
    meta = read_onnx_meta(onnx.load(str(adopted)))
    assert meta.adopted["resize"]["coordinate_transformation_mode"] == "half_pixel" and meta.adopted["resize"]["input_stride"] == 4
    assert meta.class_names == list("abcde") and meta.palette[:2] == [[255, 0, 0], [0, 255, 0]] and len(meta.palette) == 5
    # The Resize is PyTorch's bilinear align_corners=False (an independent implementation), at an odd size.
    import onnxruntime as ort

    x = preprocess(make_scene(2, 0, 75, 97)[0], IMAGENET_MEAN, IMAGENET_STD)
    low = ort.InferenceSession(str(source)).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(adopted)).run(["logits"], {"image": x})[0]
    assert low.shape[2:] == (18, 24) and got.shape == (1, 5, 75, 97)
    np.testing.assert_allclose(got, upsample_bilinear(low, 75, 97), rtol=1e-5, atol=1e-4)
    # The source (low-resolution logits) is the reference: it is resized the same way, and the engine passes.
    engine = tmp_path / "adopted.fp32.ort.onnx"
    assert main(["build-engine", str(adopted), "-o", str(engine), "--backend", "onnxruntime"]) == 0
    code, data = validate(engine, source, tmp_path)
    assert code == 0 and data["summary"]["pixel_agreement"] == 1.0


def test_static_input_is_made_dynamic_when_the_graph_allows_it(tmp_path, capsys):
    source = conv_model(tmp_path / "static.onnx", dims=(1, 3, 64, 64))
    adopted = tmp_path / "adopted.onnx"
    assert main(["adopt", str(source), "-o", str(adopted)]) == 0
    out = capsys.readouterr().out
    assert "fixed at 64x64: made dynamic" in out and "batch was fixed at 1: made dynamic" in out
    model = onnx.load(str(adopted))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert read_onnx_meta(model).adopted["made_dynamic"] == ["batch", "height", "width"]
    # The static original is a reference at any size too (its input is relaxed in memory).
    with open_runner(adopted) as engine, open_reference(source, engine.meta) as reference:
        x = preprocess(np.stack([make_scene(1, i, 45, 131)[0] for i in range(2)]), IMAGENET_MEAN, IMAGENET_STD)
        np.testing.assert_allclose(engine.infer(x).logits, reference.infer(x).logits, rtol=1e-5, atol=1e-5)


def test_static_graph_that_cannot_be_made_dynamic_is_refused(tmp_path, capsys):
    def reshape_fixed(graph, scores):  # flatten and unflatten with the export size baked in
        graph.initializer.extend([numpy_helper.from_array(np.array([1, 5, 4096], np.int64), "flat"),
                                  numpy_helper.from_array(np.array([1, 5, 64, 64], np.int64), "unflat")])  # fmt: skip
        graph.node.extend([helper.make_node("Reshape", [scores, "flat"], ["flat_scores"]),
                           helper.make_node("Softmax", ["flat_scores"], ["probs"], axis=2),
                           helper.make_node("Reshape", ["probs", "unflat"], ["probs4"])])  # fmt: skip
        return "probs4"

    source = conv_model(tmp_path / "static.onnx", dims=(1, 3, 64, 64), tail=reshape_fixed)
    adopted = tmp_path / "adopted.onnx"
    assert main(["adopt", str(source), "-o", str(adopted)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(source) in err
    assert "fixed at 1 x 3 x 64 x 64" in err and "dynamic_axes" in err
    assert not adopted.exists() and not list(tmp_path.glob(".adopted*"))


def test_mask_output_is_adopted_with_the_number_of_classes(tmp_path, capsys):
    def argmax(graph, scores):
        graph.node.append(helper.make_node("ArgMax", [scores], ["argmax_mask"], axis=1, keepdims=0))
        return "argmax_mask"

    source = conv_model(tmp_path / "mask.onnx", tail=argmax)
    adopted = tmp_path / "adopted.onnx"
    assert main(["adopt", str(source), "-o", str(adopted)]) == 2
    err = capsys.readouterr().err
    assert "error: --num-classes/--classes: " in err and "does not say how many classes" in err and not adopted.exists()
    assert main(["adopt", str(source), "-o", str(adopted), "--num-classes", "5"]) == 0
    with open_runner(adopted) as runner:
        assert [o.name for o in runner.outputs] == ["mask"]
        prediction = runner.infer(preprocess(make_scene(1, 0, 41, 53)[0], IMAGENET_MEAN, IMAGENET_STD))
    assert prediction.mask.shape == (1, 41, 53) and prediction.mask.max() < 5


def test_reference_must_be_an_fp32_model(zoo, tmp_path, capsys):
    name = "lraspp_mobilenet_v3_large"
    int8 = zoo.engine(name, "onnxruntime", "int8")
    assert main(["validate", str(int8), "--reference", str(int8), "--sizes", "33x65"]) == 2
    assert "is a built engine; the reference must be the FP32 model" in capsys.readouterr().err
    int8_graph = zoo.adopted(name).with_name("adopted.int8-onnxruntime.onnx")
    assert main(["validate", str(int8), "--reference", str(int8_graph), "--sizes", "33x65"]) == 2
    assert "not the FP32 model" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input: one line, exit 2, nothing written


def two_inputs(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["left", "right"], ["sum"]), helper.make_node("Conv", ["sum", "w"], ["out"])], "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, "H", "W"]) for n in ("left", "right")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def classifier(path: Path) -> Path:
    def head(graph, scores):
        graph.initializer.extend([numpy_helper.from_array(np.zeros((1000, 5), np.float32), "fc_w")])
        graph.node.extend([helper.make_node("GlobalAveragePool", [scores], ["pooled"]),
                           helper.make_node("Flatten", ["pooled"], ["flat"]),
                           helper.make_node("Gemm", ["flat", "fc_w"], ["class_scores"], transB=1)])  # fmt: skip
        return "class_scores"

    return conv_model(path, tail=head)


def nhwc(path: Path) -> Path:
    model = onnx.load(str(conv_model(path)))
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("input_nhwc", TensorProto.FLOAT, ["N", "H", "W", 3]))
    model.graph.node.insert(0, helper.make_node("Transpose", ["input_nhwc"], ["input"], perm=[0, 3, 1, 2]))
    onnx.save(model, str(path))
    return path


def text_file(path: Path) -> Path:
    path.write_text("this is a model card, not a model\n")
    return path


def truncated(path: Path) -> Path:
    data = conv_model(path).read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def missing_data(path: Path) -> Path:
    model = onnx.load(str(conv_model(path)))
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (path.parent / "weights.bin").unlink()
    return path


BAD = {
    "two image inputs": (two_inputs, [], "has 2 inputs (left"),
    "a classifier": (classifier, [], "1x1000"),
    "an NHWC input": (nhwc, [], "channels last (NHWC)"),
    "a text file named .onnx": (text_file, [], "is a text file, not an ONNX model"),
    "a truncated ONNX": (truncated, [], "truncated or corrupt"),
    "external data that is missing": (missing_data, [], "'weights.bin', which is missing"),
    "a --num-classes that disagrees": (conv_model, ["--num-classes", "21"], "21 classes given, and output 'scores' has 5 channels"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    make, flags, expected = BAD[case]
    source = make(tmp_path / "model.onnx")
    out = tmp_path / "out" / "adopted.onnx"
    assert main(["adopt", str(source), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(source) in err and expected in err, err
    if flags:  # the error names the flag it is about
        assert err.startswith(f"error: {flags[0]}: "), err
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))
    if case != "a --num-classes that disagrees":  # inspect says what is wrong too (exit 2 where it cannot read the file)
        code = main(["inspect", str(source), "--report", str(tmp_path / "inspect.json")])
        captured = capsys.readouterr()
        if code == 0:
            assert json.loads((tmp_path / "inspect.json").read_text())["fit"]["verdict"] == "does not fit"
            assert "does not fit" in captured.out
        else:
            assert code == 2 and str(source) in captured.err


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    source = conv_model(tmp_path / "m.onnx")
    for flags, expected in (
        (["--mean", "123.7,116.3,103.5"], "0..1 units"),
        (["--std", "0.2,0.2"], "three numbers"),
        (["--palette", "1,2"], "one r,g,b colour"),
        (["--output", "nope"], "--output: "),
        (["--output", "nope"], "has no output 'nope'"),
        (["--input-name", "nope"], "--input-name: "),
        (["--input-name", "nope"], "has no input 'nope'"),
        (["--classes", "a,b", "--num-classes", "3"], "--num-classes/--classes: "),
        (["--classes", "a,b", "--num-classes", "3"], "disagree"),
    ):
        assert main(["adopt", str(source), "-o", str(tmp_path / "x.onnx"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (flags, err)
    assert not (tmp_path / "x.onnx").exists()
    from fcn_deploy.adopt import AdoptOptions, adopt

    with pytest.raises(FcnDeployError, match="overwrite the source") as raised:
        adopt(source, source)
    assert raised.value.options == ("out",)
    assert main(["adopt", str(source), "-o", str(source)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out: {source}: would overwrite the source model")
    with pytest.raises(FcnDeployError, match="at least 2 pixels") as raised:
        adopt(source, tmp_path / "x.onnx", AdoptOptions(min_size=1))
    assert raised.value.options == ("min_size",)


def test_the_python_api_tells_its_listener_and_prints_nothing(tmp_path, capsys):
    """adopt and inspect_model print nothing: notes and progress go to the listener; inspect's next
    step is data (option names), which the CLI writes as a command line."""
    from fcn_deploy.adopt import adopt, inspect_model

    source = conv_model(tmp_path / "stride4.onnx", stride=4)
    step = inspect_model(source)["fit"]["next"]
    assert step == {"command": "adopt", "args": [str(source)], "options": {"out": str(source.with_name("stride4.adopted.onnx")),
                                                                           "num_classes": 5}}  # fmt: skip
    recorder = Recorder()
    result = adopt(source, tmp_path / "adopted.onnx", listener=recorder)
    assert capsys.readouterr() == ("", "")
    assert result["adopted"]["resize"]["input_stride"] == 4
    notes = recorder.texts()
    assert any("1/4 of the input size" in n and "bilinear Resize" in n for n in notes), notes
    assert any(n.startswith("class names: class_0 .. class_4") for n in notes) and not any("--" in n for n in notes), notes
    runs = [e for e in recorder.events if e[:2] == ("advance", "adopt")]
    assert recorder.events[0][:2] == ("start", "adopt") and recorder.events[-1][:2] == ("finish", "adopt")
    assert len(runs) > len(result["adopted"]["verified_shapes"])  # the source's run, then at least one per shape verified


def test_weights_listed_as_inputs_go_with_the_dropped_output(tmp_path):
    """Old exports (IR < 4, or keep_initializers_as_inputs) list every weight as a graph input too:
    dropping the aux output must drop its weights from the inputs, not leave inputs nothing feeds."""

    def aux_head(graph, logits):
        w_aux = numpy_helper.from_array(np.ones((5, 8, 1, 1), np.float32), "w_aux")
        graph.initializer.append(w_aux)
        graph.node.append(helper.make_node("Conv", ["r1", "w_aux"], ["aux"]))
        graph.output.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT, None))
        return logits

    source = conv_model(tmp_path / "two-heads.onnx", tail=aux_head)
    model = onnx.load(str(source))
    for init in model.graph.initializer:  # every weight listed as an input, as IR 3 requires
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    onnx.save(model, str(source))
    adopted = tmp_path / "adopted.onnx"
    assert main(["adopt", str(source), "-o", str(adopted), "--num-classes", "5", "--output", "scores"]) == 0
    graph = onnx.load(str(adopted)).graph
    initializers = {i.name for i in graph.initializer}
    assert "w_aux" not in initializers and [o.name for o in graph.output] == ["logits"]
    assert [i.name for i in graph.input if i.name not in initializers] == ["image"]
