"""Backends as plugins: the registry, ``auto``, engines opened by their manifest, the runner
template, OpenVINO engines at the product thresholds, and the bad input around all of it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fcn_deploy import backends
from fcn_deploy.backends import Profile, Runner, TensorSpec, default_profile, manifest_path, open_runner, read_manifest
from fcn_deploy.backends.onnxruntime import OnnxRuntimeBackend
from fcn_deploy.backends.openvino import OpenVinoBackend
from fcn_deploy.backends.tensorrt import TensorRTBackend
from fcn_deploy.backends.torch import TorchRunner
from fcn_deploy.cli import main
from fcn_deploy.data.images import preprocess
from fcn_deploy.data.synthetic import make_scene
from fcn_deploy.engines import BuildOptions, build_engine, resolve_profile
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.events import Recorder
from fcn_deploy.inference import Segmenter
from fcn_deploy.meta import ModelMeta
from fcn_deploy.validation import DEFAULT_THRESHOLDS, ValidateOptions, validate, validate_engine

SIZES = [(32, 32), (97, 129), (45, 160), (131, 67), (200, 200)]


@pytest.fixture(scope="module")
def openvino_engines(tiny_onnx, tiny_calibration, tmp_path_factory) -> dict[str, Path]:
    from helpers import build_all_precisions

    out = tmp_path_factory.mktemp("openvino")
    return build_all_precisions(tiny_onnx, out, backend="openvino", calib_dir=tiny_calibration, max_shape=(256, 256))


# --- the registry and auto -------------------------------------------------------------------


def test_registry_lists_every_backend_and_refuses_unknown_names():
    assert backends.names()[:3] == ["tensorrt", "openvino", "onnxruntime"]  # the built-ins, best first
    assert set(backends.names()[3:]) <= {"myort"}  # then the test plugin's entry point (tests/plugins)
    assert isinstance(backends.get("openvino"), OpenVinoBackend)
    with pytest.raises(FcnDeployError, match=r"unknown backend 'mxnet'; choose one of auto, tensorrt, openvino, onnxruntime"):
        backends.get("mxnet")


@pytest.mark.parametrize(
    ("usable", "expected"),
    [({"tensorrt", "openvino", "onnxruntime"}, "tensorrt"), ({"openvino", "onnxruntime"}, "openvino"), ({"onnxruntime"}, "onnxruntime")],
)
def test_auto_picks_the_best_usable_backend_and_says_why(monkeypatch, usable, expected):
    for cls in (TensorRTBackend, OpenVinoBackend, OnnxRuntimeBackend):
        monkeypatch.setattr(cls, "status", lambda self: (self.name in usable, "ok" if self.name in usable else "patched out"))
    recorder = Recorder()
    assert backends.resolve("auto", listener=recorder).name == expected
    logs = recorder.texts()
    assert logs[0].startswith(f"backend auto -> {expected}: ")
    for skipped in {"tensorrt", "openvino"} - usable:
        assert f"{skipped}: patched out" in logs[0]


def test_a_named_backend_that_is_not_usable_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(TensorRTBackend, "status", lambda self: (False, "no CUDA device is visible to torch"))
    with pytest.raises(FcnDeployError, match=r"^backend tensorrt is not usable here: no CUDA device .*pip install"):
        backends.resolve("tensorrt")


def test_backends_command_lists_the_registry(capsys):
    assert main(["backends", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == backends.names()
    assert {r["name"]: r["usable"] for r in rows}["onnxruntime"] is True


def test_one_default_profile(tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx))
    from fcn_deploy.meta import read_onnx_meta

    meta = read_onnx_meta(model)
    assert resolve_profile(model, meta, BuildOptions()) == default_profile(meta)
    assert open_runner(tiny_onnx).profile == default_profile(meta)
    static = default_profile(meta, [1, 3, 64, 80])
    assert static.min == static.max == (1, 64, 80)


# --- engines open by their manifest ----------------------------------------------------------


@pytest.mark.parametrize(("backend", "name"), [("onnxruntime", "m.engine"), ("openvino", "m.engine"), ("openvino", "weird.name.model")])
def test_any_output_name_loads_back_through_every_command(tiny_onnx, tiny_checkpoint, tmp_path, backend, name, capsys):
    engine = tmp_path / name
    assert main(["build-engine", str(tiny_onnx), "--backend", backend, "-o", str(engine), "--max-shape", "256x256"]) == 0
    manifest = read_manifest(engine)
    assert manifest["backend"] == backend and manifest["engine"] == name
    expected_files = {name} if backend == "onnxruntime" else {name, Path(name).with_suffix(".bin").name}
    assert {f["name"] for f in manifest["files"]} == expected_files
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    with open_runner(engine) as runner:
        assert runner.backend == backend
    assert main(["validate", str(engine), "-r", str(tiny_checkpoint), "--sizes", "64x64,97x129"]) == 0
    image = np.zeros((70, 90, 3), np.uint8)
    with Segmenter.from_engine(engine) as segmenter:
        assert segmenter.predict(image).shape == (70, 90)


def build_ov(tiny_onnx: Path, out: Path) -> Path:
    build_engine(tiny_onnx, out, BuildOptions(backend="openvino", max_shape=(128, 128)))
    return out


def test_missing_manifest_says_what_to_do(tiny_onnx, tmp_path, capsys):
    engine = build_ov(tiny_onnx, tmp_path / "m.xml")
    manifest_path(engine).unlink()
    with pytest.raises(FcnDeployError, match=r"m\.xml: its manifest m\.xml\.json is missing.*rebuild it with `fcn-deploy build-engine`"):
        open_runner(engine)
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["infer", str(tmp_path / "a.png"), "--engine", str(engine), "-o", str(tmp_path / "out")]) == 2
    assert "manifest m.xml.json is missing" in capsys.readouterr().err


def test_unknown_backend_in_manifest(tiny_onnx, tmp_path):
    engine = build_ov(tiny_onnx, tmp_path / "m.xml")
    manifest = json.loads(manifest_path(engine).read_text())
    manifest_path(engine).write_text(json.dumps({**manifest, "backend": "mxnet"}))
    with pytest.raises(FcnDeployError, match=r"names backend 'mxnet', which this fcn-deploy does not know .*rebuild the engine"):
        open_runner(engine)


def test_missing_or_tampered_engine_file_is_refused_with_the_rebuild_command(tiny_onnx, tmp_path):
    engine = build_ov(tiny_onnx, tmp_path / "m.xml")
    weights = tmp_path / "m.bin"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + b"\0\0\0\0")
    with pytest.raises(
        FcnDeployError, match=r"m\.bin's sha256 differs from its manifest .*Rebuild it: fcn-deploy build-engine .*--backend openvino"
    ):
        open_runner(engine)
    weights.unlink()
    with pytest.raises(FcnDeployError, match=r"its file m\.bin is missing.*Rebuild it"):
        open_runner(engine)


def test_a_manifest_from_another_backend_is_refused(tiny_onnx, tmp_path):
    ov_engine = build_ov(tiny_onnx, tmp_path / "m.xml")
    ort_engine = tmp_path / "m.ort.onnx"
    build_engine(tiny_onnx, ort_engine, BuildOptions(backend="onnxruntime"))
    shutil.copy(manifest_path(ort_engine), manifest_path(ov_engine))
    with pytest.raises(FcnDeployError, match=r"m\.xml: the manifest is for m\.ort\.onnx, not m\.xml"):
        open_runner(ov_engine)


def test_openvino_not_installed_names_the_package_and_writes_nothing(tiny_onnx, tmp_path, monkeypatch, capsys):
    engine = build_ov(tiny_onnx, tmp_path / "m.xml")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(FcnDeployError, match=r"openvino is not usable here: the openvino package is not installed; pip install openvino"):
        open_runner(engine)
    out = tmp_path / "new.xml"
    assert main(["build-engine", str(tiny_onnx), "--backend", "openvino", "-o", str(out)]) == 2
    assert "pip install openvino" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "new.bin").exists()


def test_a_failed_compile_leaves_no_engine_under_its_final_name(tiny_onnx, tmp_path, monkeypatch):
    def exploding_save(model, path, compress_to_fp16=True):
        Path(path).write_text("<half an xml")
        raise RuntimeError("disk full")

    import openvino

    monkeypatch.setattr(openvino, "save_model", exploding_save)
    with pytest.raises(FcnDeployError, match=r"m\.xml: OpenVINO could not save the engine \(disk full\); check the disk"):
        build_ov(tiny_onnx, tmp_path / "m.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- the runner template ---------------------------------------------------------------------


class _EchoRunner(Runner):
    """A runner whose raw run returns what the test tells it to."""

    backend = "echo"

    def __init__(self, raw):
        meta = ModelMeta(arch="x", num_classes=3, class_names=["a", "b", "c"], palette=[])
        super().__init__("echo", meta, Profile((1, 8, 8), (1, 16, 16), (2, 32, 32)))
        self.raw, self.seen = raw, []

    inputs = [TensorSpec("image", "float32", ("N", 3, "H", "W"))]  # type: ignore[assignment]
    outputs = [TensorSpec("logits", "float32", ("N", 3, "H", "W"))]  # type: ignore[assignment]

    def infer_impl(self, batch, need_logits):
        self.seen.append((batch.dtype, batch.flags["C_CONTIGUOUS"]))
        return self.raw(batch)


def test_runner_template_checks_the_profile_dtype_and_output_contract():
    logits = lambda b: np.random.default_rng(0).normal(size=(b.shape[0], 3, *b.shape[2:])).astype(np.float64)  # noqa: E731
    runner = _EchoRunner(lambda b: {"logits": logits(b)})
    batch = np.ones((2, 16, 16, 3), np.float64).transpose(0, 3, 1, 2)  # float64, not contiguous
    prediction = runner.infer(batch)
    assert runner.seen == [(np.float32, True)]
    assert prediction.logits.dtype == np.float32 and prediction.mask.dtype == np.int64
    np.testing.assert_array_equal(prediction.mask, prediction.logits.argmax(1))
    assert runner.last_infer_ms is not None and runner.last_infer_ms >= 0
    assert runner.infer(batch, need_logits=False).logits is None
    with pytest.raises(FcnDeployError, match=r"outside the engine's profile \(batch 1..2, height 8..32, width 8..32\)"):
        runner.infer(np.zeros((1, 3, 64, 16), np.float32))
    with pytest.raises(FcnDeployError, match="expected an Nx3xHxW batch"):
        runner.infer(np.zeros((1, 16, 16, 3), np.float32))
    wrong = _EchoRunner(lambda b: {"logits": np.zeros((1, 5, 16, 16), np.float32)})
    with pytest.raises(FcnDeployError, match=r"returned logits of shape \(1, 5, 16, 16\) .*expected \(1, 3, 16, 16\)"):
        wrong.infer(np.zeros((1, 3, 16, 16), np.float32))
    masked = _EchoRunner(lambda b: {"mask": np.ones((1, 16, 16), np.int32)})
    assert masked.infer(np.zeros((1, 3, 16, 16), np.float32)).mask.dtype == np.int64
    with pytest.raises(FcnDeployError, match="neither logits nor a mask"):
        _EchoRunner(lambda b: {}).infer(np.zeros((1, 3, 16, 16), np.float32))


# --- OpenVINO ----------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_openvino_engines_pass_validation_at_the_product_thresholds(openvino_engines, tiny_checkpoint, precision):
    with open_runner(openvino_engines[precision]) as runner:
        assert runner.backend == "openvino" and runner.precision == precision
        report = validate(runner, TorchRunner(tiny_checkpoint), SIZES, DEFAULT_THRESHOLDS[precision])
    assert report.passed, [(c.height, c.width, c.failures) for c in report.cases]


def test_openvino_manifest_records_version_cpu_isa_and_precision_hints(openvino_engines):
    manifest = read_manifest(openvino_engines["int8"])
    assert manifest["versions"]["openvino"] and manifest["versions"]["onnxruntime"] is not None
    assert manifest["device"]["cpu"] and isinstance(manifest["device"]["isa"], list)
    assert manifest["build"]["config"] == {"INFERENCE_PRECISION_HINT": "f32"}
    assert manifest["build"]["inference_precision"] == "f32"
    assert manifest["transform"]["int8"]["encoding"] == "uint8-asymmetric-hardswish"  # measured: ties int8, agrees better
    assert manifest["transform"]["int8"]["hardswish"] == "whole"
    fp32 = read_manifest(openvino_engines["fp32"])
    assert fp32["build"]["config"]["INFERENCE_PRECISION_HINT"] == "f32"  # never silently bf16
    fp16 = read_manifest(openvino_engines["fp16"])
    # FP16 arithmetic where the CPU has it, else the FP16 graph in FP32; never OpenVINO's silent bf16.
    assert fp16["build"]["inference_precision"] in ("f16", "f32")
    with open_runner(openvino_engines["fp16"]) as runner:
        assert runner.arithmetic == ("fp16" if fp16["build"]["inference_precision"] == "f16" else "fp16-emulated")
    assert [f["name"] for f in fp32["files"]] == [openvino_engines["fp32"].name, openvino_engines["fp32"].with_suffix(".bin").name]


def test_openvino_fp32_matches_onnxruntime_closely(openvino_engines, tiny_onnx):
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 80)).astype(np.float32)
    with open_runner(openvino_engines["fp32"]) as ov, open_runner(tiny_onnx) as ort:
        a, b = ov.infer(x).logits, ort.infer(x).logits
    assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(b).max())


def test_validate_cli_on_an_openvino_engine(openvino_engines, tiny_checkpoint, tmp_path):
    report = validate_engine(openvino_engines["int8"], tiny_checkpoint, ValidateOptions(sizes="97x129,160x200,200x96"))
    assert report.backend == "openvino" and report.passed


# --- layering ------------------------------------------------------------------------------------


def test_the_data_layer_imports_none_of_the_build_stack():
    code = "import sys, fcn_deploy.data, fcn_deploy.data.calibration; print(sorted(m for m in sys.modules if m.startswith('fcn_deploy')))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.replace("'", '"'))
    for high in ("fcn_deploy.engines", "fcn_deploy.precision", "fcn_deploy.inference", "fcn_deploy.backends", "fcn_deploy.validate"):
        assert high not in loaded, loaded


def test_build_into_a_new_folder_and_never_onto_its_own_inputs(tiny_onnx, tmp_path, capsys):
    engine = tmp_path / "new" / "deeper" / "m.xml"
    build_ov(tiny_onnx, engine)  # OpenVINO's temporary folder lives beside the engine: the folder is made first
    assert engine.is_file() and engine.with_suffix(".bin").is_file()
    src = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx, src)
    fp16_graph = tmp_path / "tiny.fp16.onnx"
    assert main(["build-engine", str(src), "--fp16", "--backend", "onnxruntime", "-o", str(fp16_graph)]) == 2
    assert "would overwrite tiny.fp16.onnx, an input of this build" in capsys.readouterr().err
    assert not fp16_graph.exists()


def test_a_report_never_replaces_an_engine_manifest(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    engine = build_ov(tiny_onnx, tmp_path / "m.xml")
    manifest = manifest_path(engine).read_text()
    for report in (manifest_path(engine), tmp_path / "copy.json"):
        if report.name == "copy.json":
            report.write_text(manifest)  # any file that is a manifest, whatever its name
        args = ["validate", str(engine), "-r", str(tiny_checkpoint), "--sizes", "64x64", "--report", str(report)]
        assert main(args) == 2
        assert "choose another report name" in capsys.readouterr().err
        assert report.read_text() == manifest


def test_a_manifest_naming_another_backend_for_the_same_file_is_refused(tiny_onnx, tmp_path):
    engine = tmp_path / "m.ort.onnx"
    build_engine(tiny_onnx, engine, BuildOptions(backend="onnxruntime"))
    manifest = json.loads(manifest_path(engine).read_text())
    manifest_path(engine).write_text(json.dumps({**manifest, "backend": "openvino"}))
    with pytest.raises(FcnDeployError, match=r"m\.ort\.onnx: the manifest does not list m\.ort\.bin.*Rebuild it"):
        open_runner(engine)


def test_openvino_argmax_in_the_graph_picks_the_first_maximum_as_numpy_does():
    """The mask graph's TopK (``sort="none"``) against numpy on logits full of exact ties, dynamic
    and static, uint8 masks up to 256 classes and int32 beyond; an OpenVINO that chose otherwise
    would make ``infer``'s masks differ from ``validate``'s."""
    import openvino as ov
    import openvino.opset11 as ops

    from fcn_deploy.backends.openvino_graphs import with_argmax_mask

    core = ov.Core()
    rng = np.random.default_rng(3)
    for classes, dtype in ((2, np.uint8), (21, np.uint8), (300, np.int32)):
        parameter = ops.parameter([-1, classes, -1, -1], np.float32)
        model = ov.Model([ops.result(ops.relu(parameter))], [parameter])
        model.outputs[0].get_tensor().set_names({"logits"})
        masked = with_argmax_mask(model, 0, dtype)
        assert [output.get_any_name() for output in masked.outputs] == ["mask"]
        for shape in ([1, classes, 9, 7], [2, classes, 64, 96]):
            static = masked.clone()
            static.reshape({static.inputs[0].get_any_name(): shape})
            for graph in (masked, static):
                request = core.compile_model(graph, "CPU").create_infer_request()
                logits = rng.integers(0, 2, shape).astype(np.float32)  # every pixel ties among about half its classes
                request.infer({0: logits})
                mask = request.get_output_tensor(0).data
                assert mask.dtype == dtype
                np.testing.assert_array_equal(mask, np.argmax(logits, axis=1))


@pytest.mark.parametrize(("precision", "size"), [("int8", (96, 128)), ("int8", (97, 131)), ("fp32", (61, 200))])
def test_openvino_mask_only_calls_run_the_argmax_graph_with_the_same_masks(openvino_engines, precision, size):
    """The second call of a shape without logits compiles the static mask graph: its masks equal
    the logits' argmax, it returns no logits, and a call wanting logits still gets them.  The FCN's
    argmax runs before its final upsampling there (the labels are interleaved by DepthToSpace)."""
    runner = open_runner(openvino_engines[precision])
    batch = preprocess(np.stack([make_scene(9, i, *size)[0] for i in range(2)]), runner.meta.mean, runner.meta.std)
    full = runner.infer(batch)
    for _ in range(3):  # first sight: the dynamic graph; then the static mask graph
        quick = runner.infer(batch, need_logits=False)
        assert quick.logits is None
        np.testing.assert_array_equal(quick.mask, full.mask)
    assert ((batch.shape, True, False) in runner._static) and runner._static[(batch.shape, True, False)][1:] == (None, 0)
    compiled = runner._static[(batch.shape, True, False)][0].get_compiled_model()
    layers = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]
    assert "DepthToSpace" in layers
    again = runner.infer(batch)
    np.testing.assert_array_equal(again.logits, full.logits)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_normalises_uint8_images_in_the_graph_as_numpy_does(openvino_engines, precision):
    """infer_images: a shape seen once is normalised in numpy for the dynamic graph; from the second
    call the static graph converts, scales and lays out the uint8 images itself.  Both give the float
    path's logits (within float rounding of the static graph) and its masks exactly."""
    runner = open_runner(openvino_engines[precision])
    assert runner.capabilities.uint8_images
    images = np.stack([make_scene(11, i, 104, 136)[0] for i in range(2)])
    reference = runner.infer(preprocess(images, runner.meta.mean, runner.meta.std))
    for _ in range(3):
        got = runner.infer_images(images)
        np.testing.assert_allclose(got.logits, reference.logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got.mask, reference.mask)
        np.testing.assert_array_equal(runner.infer_images(images, need_logits=False).mask, reference.mask)
    assert ((2, 3, 104, 136), False, True) in runner._static and ((2, 3, 104, 136), True, True) in runner._static
    with pytest.raises(FcnDeployError, match=r"expected uint8 NxHxWx3 images, got float32 \(2, 104, 136, 3\)"):
        runner.infer_images(images.astype(np.float32))


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_a_mask_in_the_callers_dtype_equals_the_int64_mask(openvino_engines, tiny_onnx, backend):
    """``mask_dtype=np.uint8`` gives the int64 mask's labels as uint8 at every call (OpenVINO's
    static mask graph hands its uint8 labels over without the round trip through int64); the
    Segmenter asks for its own dtype, so its masks, of one image or several, arrive as uint8 and
    equal the runner's."""
    runner = open_runner(openvino_engines["int8"] if backend == "openvino" else tiny_onnx)
    images = np.stack([make_scene(13, i, 96, 120)[0] for i in range(2)])
    batch = preprocess(images, runner.meta.mean, runner.meta.std)
    reference = runner.infer(batch, need_logits=False).mask
    assert reference.dtype == np.int64
    for _ in range(3):  # OpenVINO: the dynamic graph first, then the static mask graph
        got = runner.infer(batch, need_logits=False, mask_dtype=np.uint8).mask
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, reference)
    assert runner.infer(batch, need_logits=False, mask_dtype=np.int32).mask.dtype == np.int32
    with Segmenter(runner) as segmenter:
        masks = segmenter.predict_batch(list(images)) + segmenter.predict_batch([images[1]])
    assert [mask.dtype for mask in masks] == [np.uint8] * 3
    np.testing.assert_array_equal(np.stack(masks), reference[[0, 1, 1]])


def test_segmenter_hands_uint8_images_to_an_engine_that_normalises_and_floats_to_one_that_does_not(openvino_engines, tiny_onnx):
    """The same masks either way: OpenVINO gets the images (and compiles its image graph), ONNX
    Runtime, which cannot take them, gets numpy's normalised batch."""
    images = [make_scene(12, i, 96, 120)[0] for i in range(3)]
    with Segmenter(open_runner(openvino_engines["fp32"])) as segmenter:
        assert segmenter.engine_normalises
        masks = [segmenter.predict_batch(images) for _ in range(2)]
        assert any(key[2] for key in segmenter.runner._static)  # the second pass ran the image graph
    onnx_runner = open_runner(tiny_onnx)
    assert not onnx_runner.capabilities.uint8_images
    with pytest.raises(NotImplementedError, match="capabilities.uint8_images is off"):
        onnx_runner.infer_images(np.stack(images))
    with Segmenter(onnx_runner) as segmenter:
        assert not segmenter.engine_normalises
        for mask_ov, mask_again, mask_ort in zip(*masks, segmenter.predict_batch(images)):
            np.testing.assert_array_equal(mask_ov, mask_again)
            assert (mask_ov == mask_ort).mean() > 0.999
