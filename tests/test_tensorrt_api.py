"""The TensorRT builder's wiring, checked on CPU against a stand-in ``tensorrt`` module.

The real builder needs a GPU (tests/test_tensorrt.py).  This stand-in records the calls, so a CPU
run still proves the build uses the documented TensorRT 10/11 API: a strongly typed network,
``parse_from_file`` with node-by-node errors, one profile with min/opt/max, a workspace limit, a
timing cache that is read and written back, and an atomic plan write.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from fcn_deploy.errors import FcnDeployError
from fcn_deploy.backends import Profile
from fcn_deploy.backends.tensorrt import build_plan


class _Recorder:
    def __init__(self):
        self.calls: list[tuple] = []


def fake_tensorrt(recorder: _Recorder, parse_ok: bool = True, plan: bytes | None = b"PLAN") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0.106"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class Input:
        name = "image"

    class Network:
        def get_input(self, index):
            return Input()

    class ParserError:
        def node(self):
            return 7

        def node_name(self):
            return "node_Conv_3"

        def node_operator(self):
            return "Conv"

        def desc(self):
            return "unsupported attribute"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            recorder.calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, index):
            return ParserError()

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            recorder.calls.append(("set_shape", name, lo, opt, hi))

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"CACHE:" + self.data

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            recorder.calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile):
            recorder.calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            recorder.calls.append(("create_timing_cache", bytes(data)))
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            recorder.calls.append(("set_timing_cache", ignore_mismatch))
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            recorder.calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            recorder.calls.append(("build_serialized_network",))
            return plan

    trt.Logger, trt.NetworkDefinitionCreationFlag, trt.MemoryPoolType = Logger, NetworkDefinitionCreationFlag, MemoryPoolType
    trt.OnnxParser, trt.Builder = OnnxParser, Builder
    return trt


PROFILE = Profile((1, 32, 32), (2, 256, 256), (4, 1024, 768))


def test_build_uses_strong_typing_profile_workspace_and_timing_cache(monkeypatch, tmp_path):
    recorder = _Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(recorder))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = tmp_path / "model.plan"
    info = build_plan(tmp_path / "model.onnx", plan, PROFILE, workspace_gib=2, timing_cache=cache, log=lambda *a: None)
    calls = dict((c[0], c[1:]) for c in recorder.calls)
    assert calls["create_network"] == (1 << 1,)  # STRONGLY_TYPED
    assert calls["set_shape"] == ("image", (1, 3, 32, 32), (2, 3, 256, 256), (4, 3, 1024, 768))
    assert calls["set_memory_pool_limit"] == ("workspace", 2 << 30)
    assert calls["create_timing_cache"] == (b"old",) and calls["set_timing_cache"] == (False,)
    assert plan.read_bytes() == b"PLAN"
    assert cache.read_bytes() == b"CACHE:old"
    assert info["tensorrt"] == "11.4.0.106"
    assert not list(tmp_path.glob(".*tmp*"))


def test_parse_errors_are_reported_node_by_node(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(_Recorder(), parse_ok=False))
    with pytest.raises(FcnDeployError, match=r"node 7 \(node_Conv_3, Conv\): unsupported attribute"):
        build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, log=lambda *a: None)
    assert not (tmp_path / "model.plan").exists()


def test_failed_build_writes_no_plan(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(_Recorder(), plan=None))
    with pytest.raises(FcnDeployError, match="failed to build"):
        build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, log=lambda *a: None)
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorrt_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(FcnDeployError, match=r"pip install 'fcn-deploy\[tensorrt\]'"):
        build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, log=lambda *a: None)
    assert Path(tmp_path).exists()
