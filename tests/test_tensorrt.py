"""TensorRT engines on a GPU (skipped, with the reason, without CUDA or the tensorrt package).

Run on a GPU machine with ``bash scripts/gpu-check.sh`` or ``python -m pytest -m "gpu or tensorrt"``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fcn_deploy.backends import open_runner as load_runner
from fcn_deploy.backends import read_manifest
from fcn_deploy.backends.torch import TorchRunner
from fcn_deploy.engines import BuildOptions, build_engine
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.export import ExportOptions, export_onnx
from fcn_deploy.validation import DEFAULT_THRESHOLDS, spread_sizes, validate

from helpers import build_all_precisions

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


@pytest.fixture(scope="module")
def trt_engines(tiny_onnx, tiny_calibration, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("trt")
    return build_all_precisions(
        tiny_onnx, out, backend="tensorrt", calib_dir=tiny_calibration, max_shape=(512, 512), batch=(1, 1, 4),
        timing_cache=out / "timing.cache",
    )  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engine_matches_reference_at_many_sizes(trt_engines, tiny_checkpoint, precision):
    runner = load_runner(trt_engines[precision])
    assert runner.backend == "tensorrt" and runner.precision == precision
    manifest = read_manifest(trt_engines[precision])
    assert manifest["versions"].get("tensorrt") and manifest["device"].get("compute_capability")
    assert manifest["build"]["builder"]["tf32"] is False and manifest["build"]["strongly_typed"] is True
    sizes = spread_sizes(runner.profile, random_sizes=3, seed=1)
    report = validate(runner, TorchRunner(tiny_checkpoint), sizes, DEFAULT_THRESHOLDS[precision], batch=2)
    assert report.passed, report.failing_sizes


def test_timing_cache_is_written_and_reused(trt_engines):
    """The fixture builds FP32 first into a fresh folder, then FP16 and INT8 from the cache FP32 wrote."""
    cache = trt_engines["fp32"].parent / "timing.cache"
    assert cache.is_file() and cache.stat().st_size > 0
    first = read_manifest(trt_engines["fp32"])["build"]
    assert first["timing_cache_bytes_read"] == 0 and first["timing_cache_reused"] is False
    assert first["timing_cache_bytes_written"] > 0
    for precision in ("fp16", "int8"):
        build = read_manifest(trt_engines[precision])["build"]
        assert build["timing_cache_reused"] is True, precision
        assert build["timing_cache_bytes_read"] >= first["timing_cache_bytes_written"], precision


def test_shape_outside_profile_is_refused_with_the_range(trt_engines):
    runner = load_runner(trt_engines["fp32"])
    with pytest.raises(FcnDeployError, match=r"height 32..512"):
        runner.infer(np.zeros((1, 3, 600, 64), np.float32))


def test_int64_mask_output_engine(tiny_checkpoint, tmp_path):
    onnx_path = tmp_path / "masked.onnx"
    export_onnx(tiny_checkpoint, onnx_path, ExportOptions(mask_output=True), check_sizes=[(64, 64)])
    manifest = build_engine(onnx_path, None, BuildOptions(backend="tensorrt", max_shape=(256, 256)))
    runner = load_runner(tmp_path / manifest["engine"])
    assert {o.name for o in runner.outputs} == {"logits", "mask"}
    x = np.random.default_rng(0).normal(size=(2, 3, 97, 129)).astype(np.float32)
    prediction = runner.infer(x)
    assert prediction.mask.shape == (2, 97, 129) and prediction.mask.dtype == np.int64
    np.testing.assert_array_equal(prediction.mask, prediction.logits.argmax(1))


def test_tampered_plan_is_refused_with_rebuild_command(trt_engines, tmp_path):
    from fcn_deploy.backends import manifest_path

    copy = tmp_path / trt_engines["fp16"].name
    shutil.copy(trt_engines["fp16"], copy)
    shutil.copy(manifest_path(trt_engines["fp16"]), manifest_path(copy))
    with open(copy, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(FcnDeployError, match="Rebuild it: fcn-deploy build-engine"):
        load_runner(copy)


def test_benchmark_records_gpu_event_time_and_host_time(trt_engines, tiny_checkpoint):
    from fcn_deploy.bench import run_benchmark

    report = run_benchmark([trt_engines["fp16"]], reference=tiny_checkpoint, sizes=[(256, 256)], warmup=2, iters=5, cuda_graph=True)
    rows = {(r["backend"], r["precision"], r["device"]): r for r in report["results"]}
    trt = rows[("tensorrt", "fp16", "cuda")]
    assert trt["cuda_graph"] and 0 < trt["gpu_median_ms"] <= trt["median_ms"] * 1.05
    assert rows[("torch", "fp32", "cuda")]["tf32"] is False and rows[("torch", "tf32", "cuda")]["tf32"] is True
    assert any("far from the" in note for note in trt["notes"])  # the fixture's engines are tuned at 128x128
