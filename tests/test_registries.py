"""Concepts as objects: a precision is one registry entry plus the backends that declare it; every
precision-specific option is refused where it does not apply, before any work."""

from __future__ import annotations

import json

import pytest

from fcn_deploy import precisions
from fcn_deploy.backends import read_manifest
from fcn_deploy.backends.onnxruntime import OnnxRuntimeBackend
from fcn_deploy.cli import main
from fcn_deploy.engines import BuildOptions, build_engine
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.validation import default_thresholds

TOY = precisions.Precision(
    name="bf16w", description="FP32 arithmetic on weights rounded to bfloat16 (a test precision)", graph_suffix="bf16w",
    transform="toy_precision:transform", limits={"pixel_agreement": 0.995, "size_floor": 0.98, "confidence_margin": 1.0},
    arithmetic="fp32",
)  # fmt: skip


@pytest.fixture
def toy_precision(monkeypatch):
    """Register the toy precision and let ONNX Runtime (only) declare it, for one test."""
    precisions.register(TOY)
    monkeypatch.setattr(OnnxRuntimeBackend, "precisions", (*OnnxRuntimeBackend.precisions, "bf16w"))
    yield TOY
    precisions.unregister("bf16w")


def test_a_new_precision_is_one_entry_plus_the_backends_that_declare_it(toy_precision, tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    source = tmp_path / "tiny.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    manifest = build_engine(source, None, BuildOptions(precision="bf16w", backend="onnxruntime", max_shape=(256, 256)))
    assert (tmp_path / "tiny.bf16w.onnx").is_file() and manifest["precision"] == "bf16w"
    assert manifest["transform"]["toy"]["rounded_initializers"] > 10
    assert "--precision bf16w" in manifest["rebuild_command"]
    engine = tmp_path / manifest["engine"]
    report = tmp_path / "val.json"
    assert main(["validate", str(engine), "-r", str(tiny_checkpoint), "--sizes", "64x64,97x129", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["precision"] == "bf16w" and data["passed"] is True
    assert data["thresholds"]["pixel_agreement"] == 0.995 == default_thresholds("bf16w").pixel_agreement
    assert main(["build-engine", str(source), "--precision", "bf16w", "--backend", "openvino", "-o", str(tmp_path / "x.xml")]) == 2
    err = capsys.readouterr().err
    assert "backend openvino does not compile bf16w engines (it compiles fp32, fp16, int8)" in err and "\n" not in err.strip()
    assert not (tmp_path / "x.xml").exists() and not (tmp_path / "tiny.bf16w.openvino.onnx").exists()


def test_unknown_precisions_and_misplaced_options_are_refused_before_any_work(tiny_onnx, tmp_path, capsys):
    source = tmp_path / "tiny.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    assert main(["build-engine", str(source), "--precision", "fp8"]) == 2
    assert "--precision: unknown precision 'fp8'; choose one of fp32, fp16, int8" in capsys.readouterr().err
    for flags, option in ((["--fp16", "--calib-method", "percentile"], "--calib-method"), (["--float-nodes", "Conv_0"], "--float-nodes"),
                          (["--fp16", "--int8-target", "tensorrt"], "--int8-target")):  # fmt: skip
        assert main(["build-engine", str(source), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith(f"error: {option}: ") and "used by int8 builds only" in err, err
    assert main(["build-engine", str(source), "--fp16", "--int8"]) == 2
    assert "choose one precision" in capsys.readouterr().err
    assert main(["build-engine", str(source), "--backend", "openvino", "--workspace", "2"]) == 2
    assert "--workspace: backend openvino has no option workspace_gib" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # nothing was built


def test_backend_options_are_recorded_and_rebuilt(tiny_onnx, tmp_path):
    source = tmp_path / "tiny.onnx"
    source.write_bytes(tiny_onnx.read_bytes())
    engine = tmp_path / "t.myort.onnx"
    assert main(["build-engine", str(source), "--backend", "myort", "--myort-tag", "blue", "-o", str(engine)]) == 0
    manifest = read_manifest(engine)
    assert manifest["backend_options"] == {"myort_tag": "blue"} and manifest["build"]["myort_tag"] == "blue"
    assert "--myort-tag blue" in manifest["rebuild_command"]


def test_registry_lookups_fail_in_one_line():
    with pytest.raises(FcnDeployError, match=r"^unknown precision 'int4'; choose one of fp32, fp16, int8$"):
        precisions.get("int4")
    with pytest.raises(ValueError, match="already registered"):
        precisions.register(precisions.get("fp16"))
