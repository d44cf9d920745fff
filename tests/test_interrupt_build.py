"""Ctrl-C at each stage of build-engine leaves the old complete engine (its files and manifest, still
opening) or nothing, and never a temporary file.  (export-triton --overwrite: test_serve.py.)"""

from __future__ import annotations

import shutil

import pytest

from fcn_deploy.backends import manifest_path, open_runner
from fcn_deploy.backends.onnxruntime import OnnxRuntimeBackend
from fcn_deploy.engines import BuildOptions, build_engine


@pytest.fixture
def old_engine(tiny_onnx, tiny_calibration, tmp_path):
    """A complete FP16 ONNX Runtime engine of the tiny model, built once per test in its own folder."""
    src = tmp_path / "tiny.onnx"
    shutil.copy(tiny_onnx, src)
    options = BuildOptions(precision="fp16", backend="onnxruntime", calib_dir=tiny_calibration, max_shape=(128, 128))
    engine = tmp_path / build_engine(src, None, options)["engine"]
    return src, engine, options


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def after(real):
    def run_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    return run_then_interrupt


STAGES = {
    # stage: (what is patched, whether the old engine survives)
    "transform": ("fcn_deploy.engines.apply_precision", interrupt, True),
    "compile, before writing": (OnnxRuntimeBackend, interrupt, True),
    "compile, engine written": (OnnxRuntimeBackend, "after", False),
    "between the engine and its manifest": ("fcn_deploy.engines.write_manifest", interrupt, False),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_interrupted_rebuild_leaves_the_old_engine_or_nothing(stage, old_engine, monkeypatch):
    src, engine, options = old_engine
    folder = engine.parent
    before = snapshot(folder)
    target, patch, survives = STAGES[stage]
    if target is OnnxRuntimeBackend:
        monkeypatch.setattr(OnnxRuntimeBackend, "compile", after(OnnxRuntimeBackend.compile) if patch == "after" else interrupt)
    else:
        monkeypatch.setattr(target, patch)
    with pytest.raises(KeyboardInterrupt):
        build_engine(src, None, options)
    monkeypatch.undo()
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name], "a temporary file was left"
    if survives:
        assert snapshot(folder) == before  # untouched, and it still opens through its manifest
        with open_runner(engine) as runner:
            assert runner.precision == "fp16"
    else:
        assert not engine.exists() and not manifest_path(engine).exists()  # nothing: no engine under an old manifest
        assert set(snapshot(folder)) <= set(before)
    build_engine(src, None, options)  # and a rebuild afterwards works
    with open_runner(engine) as runner:
        assert runner.precision == "fp16"
