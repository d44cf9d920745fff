"""build-engine: FP16/INT8 as ONNX transforms run by ONNX Runtime on CPU, calibration cache, manifests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from fcn_deploy.backends import manifest_path, read_manifest
from fcn_deploy.backends import open_runner as load_runner
from fcn_deploy.backends.torch import TorchRunner
from fcn_deploy.cli import main
from fcn_deploy.data.calibration import generate_default_calibration, load_calibration
from fcn_deploy.engines import BuildOptions, build_engine, resolve_profile
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.events import Recorder
from fcn_deploy.meta import read_onnx_meta
from fcn_deploy.precision import apply_precision, calibration_cache_key
from fcn_deploy.precision.fp16 import convert_fp16
from fcn_deploy.validation import DEFAULT_THRESHOLDS, spread_sizes, validate

from helpers import build_all_precisions

SIZES = [(32, 32), (64, 64), (97, 129), (45, 160)]


@pytest.fixture(scope="module")
def calib_dir(tiny_calibration) -> Path:
    return tiny_calibration


@pytest.fixture(scope="module")
def built(tiny_onnx, calib_dir, tmp_path_factory) -> dict[str, Path]:
    """The three precisions, built once for the module (ONNX Runtime backend)."""
    out_dir = tmp_path_factory.mktemp("engines")
    return build_all_precisions(tiny_onnx, out_dir, backend="onnxruntime", calib_dir=calib_dir, max_shape=(256, 256))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_precision_engines_run_on_cpu_and_agree_with_the_reference(built, tiny_checkpoint, precision):
    runner = load_runner(built[precision])
    assert runner.backend == "onnxruntime" and runner.precision == precision
    assert [i.dtype for i in runner.inputs] == ["float32"]  # I/O stays float32 for every precision
    report = validate(runner, TorchRunner(tiny_checkpoint), SIZES, DEFAULT_THRESHOLDS[precision])
    agreement = min(c.pixel_agreement for c in report.cases)
    # Measured agreement of the tiny, briefly trained model: FP32 ~100 %, FP16 >= 99.9 %, INT8 >= 97 %.
    floor = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.97}[precision]
    assert agreement >= floor, (precision, [(c.height, c.width, c.pixel_agreement) for c in report.cases])
    # ... and the compiled engine users run meets the product's thresholds, pooled and per size
    assert report.passed, (precision, report.failures, {f"{c.height}x{c.width}": c.failures for c in report.cases if c.failures})


def test_fp16_graph_keeps_io_float32_and_blocks_overflowing_nodes(tiny_onnx, calib_dir):
    model = onnx.load(str(tiny_onnx))
    calibration = load_calibration(calib_dir, read_onnx_meta(model))
    converted, kept = convert_fp16(model, calibration)
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = [i for i in converted.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves, "weights should be FP16"
    # With an absurdly low data_max every node whose output exceeds it must stay FP32.
    _, kept_low = convert_fp16(model, calibration, data_max=1.0)
    assert len(kept_low) > len(kept)
    assert set(kept) <= set(kept_low)


def test_int8_graph_for_tensorrt_is_explicit_symmetric_qdq(tiny_onnx, calib_dir, tmp_path):
    """The graph TensorRT compiles: symmetric int8 Q/DQ, zero points 0, per-channel weights."""
    int8_onnx = tmp_path / "tiny.int8-tensorrt.onnx"
    report = apply_precision(tiny_onnx, int8_onnx, "int8", calib_dir=calib_dir, int8_encoding="int8-symmetric")
    assert report["int8"]["encoding"] == "int8-symmetric"
    model = onnx.load(str(int8_onnx))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(np.all(z == 0) for z in zero_points), "TensorRT needs symmetric (zero-point 0) Q/DQ"
    assert all(z.dtype == np.int8 for z in zero_points), "int8 only: TensorRT rejects int32 (bias) Q/DQ"
    produced_by = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    per_channel = [
        produced_by[c.input[1]] for c in convs if c.input[1] in produced_by and produced_by[c.input[1]].op_type == "DequantizeLinear"
    ]
    assert len(per_channel) == len(convs), "every Conv weight is dequantized from int8"
    assert all(inits[dq.input[1]].ndim == 1 and inits[dq.input[1]].size > 1 for dq in per_channel), "per-channel scales"
    for deconv in (n for n in model.graph.node if n.op_type == "ConvTranspose"):
        source = produced_by.get(deconv.input[1])
        assert source is None or source.op_type != "DequantizeLinear", "ConvTranspose is excluded from INT8"


def test_int8_graph_for_onnxruntime_uses_uint8_activations_and_int8_weights(built):
    manifest = read_manifest(built["int8"])
    assert manifest["transform"]["int8"]["target"] == "onnxruntime"
    model = onnx.load(manifest["precision_onnx"])
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    produced_by = {o: n for n in model.graph.node for o in n.output}
    float_nodes = set(manifest["int8_check"]["float_nodes"])  # the INT8 check's repair keeps these in FP32
    quantized = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in float_nodes]
    assert quantized and len(quantized) >= len([n for n in model.graph.node if n.op_type == "Conv"]) // 2
    for conv in quantized:
        act_dq, weight_dq = produced_by[conv.input[0]], produced_by[conv.input[1]]
        assert inits[act_dq.input[2]].dtype == np.uint8
        assert inits[weight_dq.input[0]].dtype == np.int8 and np.all(inits[weight_dq.input[2]] == 0)


def test_calibration_cache_hits_and_misses(tiny_onnx, tmp_path):
    folder = tmp_path / "calib"
    generate_default_calibration(folder, count=32, size=64)  # percentile needs 32
    first = apply_precision(tiny_onnx, tmp_path / "a.int8.onnx", "int8", calib_dir=folder)
    second = apply_precision(tiny_onnx, tmp_path / "b.int8.onnx", "int8", calib_dir=folder)
    assert first["calibration"]["cache_hit"] is False and second["calibration"]["cache_hit"] is True
    assert first["calibration"]["cache_key"] == second["calibration"]["cache_key"]
    assert onnx.load(str(tmp_path / "a.int8.onnx")).graph == onnx.load(str(tmp_path / "b.int8.onnx")).graph
    other_method = apply_precision(tiny_onnx, tmp_path / "c.int8.onnx", "int8", calib_dir=folder, calib_method="percentile")
    assert other_method["calibration"]["cache_hit"] is False
    # Change one image's content: a new key, never the stale ranges.
    image = folder / "synthetic_0000.png"
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    changed = apply_precision(tiny_onnx, tmp_path / "d.int8.onnx", "int8", calib_dir=folder)
    assert changed["calibration"]["cache_hit"] is False
    assert changed["calibration"]["cache_key"] != first["calibration"]["cache_key"]
    # Different shapes (an image of another size) change the key too.
    meta = read_onnx_meta(onnx.load(str(tiny_onnx)))
    calib = load_calibration(folder, meta)
    key = calibration_cache_key(b"model", calib, "minmax")
    Image.fromarray(np.zeros((80, 72, 3), np.uint8)).save(folder / "extra.png")
    assert calibration_cache_key(b"model", load_calibration(folder, meta), "minmax") != key
    assert calibration_cache_key(b"other model", calib, "minmax") != key


def test_calibration_folder_problems(tiny_onnx, tmp_path):
    meta = read_onnx_meta(onnx.load(str(tiny_onnx)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FcnDeployError, match="0 usable image"):
        load_calibration(empty, meta)
    with pytest.raises(FcnDeployError, match="calibration folder not found"):
        load_calibration(tmp_path / "nope", meta)
    mixed = tmp_path / "mixed"
    generate_default_calibration(mixed, count=8, size=64)
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "broken.png").write_bytes(b"not a png")
    calib = load_calibration(mixed, meta)
    assert len(calib.files) == 8 and sorted(calib.skipped) == ["broken.png", "notes.txt"]
    (mixed / "synthetic_0000.png").unlink()
    with pytest.raises(FcnDeployError, match=r"7 usable image\(s\) \(skipped 2 other files\)"):
        load_calibration(mixed, meta)


def test_manifest_records_the_build_and_detects_tampering(built, tiny_onnx, tmp_path):
    engine = built["int8"]
    manifest = read_manifest(engine)
    for key in ("backend", "precision", "versions", "device", "profile", "engine_sha256", "source_onnx_sha256",
                "calibration_sha256", "meta", "built_at", "built_by", "rebuild_command"):  # fmt: skip
        assert manifest.get(key), key
    assert manifest["backend"] == "onnxruntime" and manifest["precision"] == "int8"
    assert manifest["profile"] == {"min": [1, 32, 32], "opt": [1, 96, 96], "max": [8, 256, 256]}
    assert {"onnxruntime", "onnx", "torch", "fcn_deploy"} <= set(manifest["versions"])
    assert manifest["meta"]["class_names"] == read_onnx_meta(onnx.load(str(tiny_onnx))).class_names
    assert "--precision int8" in manifest["rebuild_command"]

    copy = tmp_path / engine.name
    shutil.copy(engine, copy)
    shutil.copy(manifest_path(engine), manifest_path(copy))
    load_runner(copy).close()
    with open(copy, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(FcnDeployError, match=r"sha256 differs.*Rebuild it: fcn-deploy build-engine"):
        load_runner(copy)
    shutil.copy(engine, copy)
    stale = dict(manifest, versions={**manifest["versions"], "onnxruntime": "0.1.0"})
    manifest_path(copy).write_text(json.dumps(stale))
    with pytest.raises(FcnDeployError, match="built with ONNX Runtime 0.1.0"):
        load_runner(copy)
    manifest_path(copy).unlink()
    with pytest.raises(FcnDeployError, match="manifest .* is missing"):
        read_manifest(copy)


def test_profile_from_metadata_flags_and_static_onnx(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    meta = read_onnx_meta(model)
    recorder = Recorder()
    profile = resolve_profile(model, meta, BuildOptions(), listener=recorder)
    assert profile.min == (1, meta.min_size, meta.min_size) and profile.max == (8, meta.max_size, meta.max_size)
    assert profile.opt == (1, meta.train_size, meta.train_size)
    flagged = resolve_profile(model, meta, BuildOptions(min_shape=(64, 48), opt_shape=(128, 128), max_shape=(512, 640), batch=(1, 2, 4)))
    assert (flagged.min, flagged.opt, flagged.max) == ((1, 64, 48), (2, 128, 128), (4, 512, 640))
    with pytest.raises(FcnDeployError, match="min <= opt <= max"):
        resolve_profile(model, meta, BuildOptions(min_shape=(256, 256), opt_shape=(128, 128)))
    with pytest.raises(FcnDeployError, match="below fcn8s-resnet18's minimum"):
        resolve_profile(model, meta, BuildOptions(min_shape=(16, 16)))

    static = onnx.load(str(tiny_onnx))
    for value in list(static.graph.input) + list(static.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, [1, dims[1].dim_value, 64, 80]):
            dim.dim_value = size
    static_path = tmp_path / "static.onnx"
    onnx.save(static, str(static_path))
    recorder = Recorder()
    manifest = build_engine(static_path, None, BuildOptions(backend="onnxruntime"), listener=recorder)
    assert any("static engine for 64x80" in line for line in recorder.texts())
    assert manifest["profile"] == {"min": [1, 64, 80], "opt": [1, 64, 80], "max": [1, 64, 80]}
    runner = load_runner(tmp_path / manifest["engine"])
    with pytest.raises(FcnDeployError, match=r"outside the engine's profile \(batch 1..1, height 64..64, width 80..80\)"):
        runner.infer(np.zeros((1, 3, 96, 96), np.float32))


def test_build_engine_cli_errors(tiny_onnx, tmp_path, capsys):
    assert main(["build-engine", str(tmp_path / "missing.onnx")]) == 2
    assert "ONNX model not found" in capsys.readouterr().err
    assert main(["build-engine", str(tiny_onnx), "--fp16", "--int8"]) == 2
    assert main(["build-engine", str(tiny_onnx), "--min-shape", "abc", "-o", str(tmp_path / "e.ort.onnx")]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
    empty = tmp_path / "empty-calib"
    empty.mkdir()
    assert main(["build-engine", str(tiny_onnx), "--int8", "--backend", "onnxruntime", "--calib", str(empty),
                 "-o", str(tmp_path / "e.ort.onnx")]) == 2  # fmt: skip
    assert "usable image" in capsys.readouterr().err
    assert not (tmp_path / "e.ort.onnx").exists()
    assert main(["build-engine", str(tiny_onnx), "--backend", "nosuch"]) == 2
    assert "unknown backend 'nosuch'; choose one of auto, tensorrt, openvino, onnxruntime" in capsys.readouterr().err


def test_validate_spread_stays_inside_profile(built):
    runner = load_runner(built["fp32"])
    sizes = spread_sizes(runner.profile, random_sizes=6, seed=1)
    assert (32, 32) in sizes and (256, 256) in sizes
    assert all(32 <= h <= 256 and 32 <= w <= 256 for h, w in sizes)
    assert any(h % 32 and w % 32 for h, w in sizes)
    assert any(max(h, w) / min(h, w) >= 5 for h, w in sizes)


def test_refuses_to_build_from_a_built_engine_or_to_guess_calibration(built, tmp_path, monkeypatch):
    with pytest.raises(FcnDeployError, match="already a built"):
        build_engine(built["fp16"], tmp_path / "again.ort.onnx", BuildOptions())
    # A model not trained on the synthetic scenes gets no generated calibration set.
    model = onnx.load(str(read_manifest(built["fp32"])["source_onnx"]))
    meta = read_onnx_meta(model)
    meta.class_names = [f"class{i}" for i in range(meta.num_classes)]
    from fcn_deploy.meta import write_onnx_meta

    write_onnx_meta(model, meta)
    other = tmp_path / "other.onnx"
    onnx.save(model, str(other))
    monkeypatch.chdir(tmp_path)  # no ./calibration here
    with pytest.raises(FcnDeployError, match="give a calibration folder with images like"):
        apply_precision(other, tmp_path / "other.int8.onnx", "int8")
    assert not (tmp_path / "calibration").exists()
