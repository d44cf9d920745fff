"""The TensorRT backend's use of the TensorRT 10.x and 11.x Python API, checked on CPU against stand-ins.

What this proves: ``build_plan`` and ``TrtRunner`` call the documented API with the values each
major version defines (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is 1 in 10.x; in 11.x it
is 0, deprecated and ignored, because every network is strongly typed; ``BuilderFlag.TF32`` is 6
and on by default in both), record the builder settings for the manifest, and handle every failure
TensorRT reports: parse errors, a timing cache from another GPU, a cache that cannot be created, a
failed build, a plan that does not deserialize, a refused input shape, a failed execution.  On the
runtime side it proves the binding logic: buffers of the shape and dtype the execution context
reports, bound by address, read back as float32 logits and an int64 mask.

What it cannot prove: that TensorRT accepts a graph (the GPU tests in tests/test_tensorrt.py, and
the parser lint in tests/test_precision.py), or anything about CUDA memory and streams.  Here the
runner's buffers are CPU tensors (``TrtRunner.buffer_device`` is patched) and the stand-in engine
"executes" by reading and writing those buffers through the addresses it was given.

Every stand-in is built per test and installed with ``monkeypatch`` only, so no state outlives a test.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from fcn_deploy.backends import Profile
from fcn_deploy.backends import tensorrt as trt_backend
from fcn_deploy.backends.tensorrt import TrtRunner, build_plan
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.events import Recorder
from fcn_deploy.meta import ModelMeta

TRT10, TRT11 = "10.16.1.11", "11.4.0.106"
PROFILE = Profile((1, 32, 32), (2, 256, 256), (4, 1024, 768))
NO_LOG: dict = {}


def fake_tensorrt(version: str, calls: list, *, parse_ok=True, plan: bytes | None = b"PLAN", cache_ok=True) -> types.ModuleType:
    """A ``tensorrt`` module with the enum values of ``version`` that records the build calls in ``calls``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    # Values from include/NvInfer.h of TensorRT 10.16 and 11.1 (NVIDIA/TensorRT).
    if major >= 11:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
        )
        trt.BuilderFlag = enum.IntEnum(
            "BuilderFlag", {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7}
        )
    else:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag",
            {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3},
        )
        trt.BuilderFlag = enum.IntEnum(
            "BuilderFlag",
            {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7},
        )
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "INT64": 8})

    class Logger:
        WARNING = 2

        def __init__(self, level):
            calls.append(("Logger", level))

    class Network:
        def get_input(self, index):
            return types.SimpleNamespace(name="image")

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
            calls.append(("parse_from_file", path))
            return parse_ok

        def get_error(self, index):
            return ParserError()

    class OptimizationProfile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, lo, opt, hi))

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = data

        def serialize(self):
            return b"CACHE:" + self.data

    class Config:
        def __init__(self):
            self.flags = 1 << int(trt.BuilderFlag.TF32)  # TF32 is on by default in 10.x and 11.x
            self.cache = None
            self.builder_optimization_level = 3

        def set_flag(self, flag):
            self.flags |= 1 << int(flag)

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag.name))
            self.flags &= ~(1 << int(flag))

        def get_flag(self, flag):
            return bool(self.flags & (1 << int(flag)))

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(bytes(data)) if cache_ok else None

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            if cache.data.startswith(b"other-gpu") and not ignore_mismatch:
                return False  # a cache written on another GPU or TensorRT version
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", config.get_flag(trt.BuilderFlag.TF32)))
            return plan

    trt.Logger, trt.OnnxParser, trt.Builder = Logger, OnnxParser, Builder
    trt.Runtime = lambda logger: FakeRuntime(trt, calls)
    return trt


def calls_named(calls: list, name: str) -> list[tuple]:
    return [c[1:] for c in calls if c[0] == name]


@pytest.fixture
def install(monkeypatch):
    """Install a stand-in as ``tensorrt`` for one test; the backend's logger cache starts empty."""

    def _install(version: str, **options) -> list:
        calls: list = []
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, calls, **options))
        monkeypatch.setattr(trt_backend, "_LOGGER", None)
        return calls

    return _install


# --------------------------------------------------------------------------- build


@pytest.mark.parametrize(("version", "network_flags"), [(TRT10, 1 << 1), (TRT11, 0)])
def test_build_is_strongly_typed_without_tf32_and_records_the_builder(install, tmp_path, version, network_flags):
    calls = install(version)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = tmp_path / "model.plan"
    info = build_plan(tmp_path / "model.onnx", plan, PROFILE, workspace_gib=2, timing_cache=cache, **NO_LOG)
    assert calls_named(calls, "create_network") == [(network_flags,)]  # 10.x opts in; 11.x always strongly typed
    assert calls_named(calls, "set_shape") == [("image", (1, 3, 32, 32), (2, 3, 256, 256), (4, 3, 1024, 768))]
    assert calls_named(calls, "set_memory_pool_limit")[0][1] == 2 << 30
    assert calls_named(calls, "clear_flag") == [("TF32",)]
    assert calls_named(calls, "build_serialized_network") == [(False,)], "TF32 must be off when the builder runs"
    assert info["builder"]["tf32"] is False and "TF32" not in info["builder"]["flags"]
    assert info["builder"]["builder_optimization_level"] == 3
    assert info["network_flags"] == network_flags and info["tensorrt"] == version
    assert calls_named(calls, "set_timing_cache") == [(b"old", False)]
    assert info["timing_cache_reused"] is True and info["timing_cache_bytes_read"] == 3
    assert plan.read_bytes() == b"PLAN" and cache.read_bytes() == b"CACHE:old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.plan", "timing.cache"]  # no temporary files left


def test_a_timing_cache_from_another_gpu_is_replaced(install, tmp_path):
    calls = install(TRT11)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"other-gpu")
    recorder = Recorder()
    info = build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, timing_cache=cache, listener=recorder)
    logs = recorder.texts()
    assert calls_named(calls, "set_timing_cache") == [(b"other-gpu", False), (b"", True)]
    assert any("does not match this TensorRT/GPU; starting a new one" in line for line in logs)
    assert info["timing_cache_reused"] is False
    assert cache.read_bytes() == b"CACHE:"  # the fresh cache, not the stale bytes


def test_a_timing_cache_that_cannot_be_created_is_a_clear_error(install, tmp_path):
    install(TRT10, cache_ok=False)
    with pytest.raises(FcnDeployError, match="could not start a timing cache; build without one"):
        build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, timing_cache=tmp_path / "t.cache", **NO_LOG)
    assert list(tmp_path.iterdir()) == []


def test_parse_errors_are_reported_node_by_node(install, tmp_path):
    install(TRT11, parse_ok=False)
    with pytest.raises(FcnDeployError, match=r"node 7 \(node_Conv_3, Conv\): unsupported attribute"):
        build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, **NO_LOG)
    assert not (tmp_path / "model.plan").exists()


def test_failed_build_writes_no_plan(install, tmp_path):
    install(TRT11, plan=None)
    with pytest.raises(FcnDeployError, match="failed to build"):
        build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, timing_cache=tmp_path / "t.cache", **NO_LOG)
    assert list(tmp_path.iterdir()) == []


def test_missing_tensorrt_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(FcnDeployError, match=r"TensorRT is not installed: .*pip install 'fcn-deploy\[tensorrt\]'"):
        build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, **NO_LOG)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- run


def _buffer(address: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A numpy view of ``shape`` elements of ``dtype`` at ``address`` (what TensorRT writes through)."""
    count = int(np.prod(shape))
    raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def expected_logits(x: np.ndarray) -> np.ndarray:
    """What the stand-in engine computes: 5 classes from the 3 input channels."""
    return np.stack([x[:, c % 3] * (c + 1) - 0.5 * c for c in range(5)], axis=1).astype(np.float32)


class FakeRuntime:
    """``trt.Runtime``: deserializes b"PLAN" into an engine with an image input, logits and an int64 mask."""

    def __init__(self, trt, calls):
        self.trt, self.calls = trt, calls

    def deserialize_cuda_engine(self, data: bytes):
        self.calls.append(("deserialize_cuda_engine", bytes(data)))
        return FakeEngine(self.trt, self.calls) if bytes(data).startswith(b"PLAN") else None


class FakeEngine:
    IO = {"image": ("INPUT", "FLOAT"), "logits": ("OUTPUT", "FLOAT"), "mask": ("OUTPUT", "INT64")}

    def __init__(self, trt, calls):
        self.trt, self.calls = trt, calls
        self.num_io_tensors = len(self.IO)
        self.fail_execution = False

    def get_tensor_name(self, index):
        return list(self.IO)[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode[self.IO[name][0]]

    def get_tensor_dtype(self, name):
        return self.trt.DataType[self.IO[name][1]]

    def get_tensor_shape(self, name):
        return (-1, 3, -1, -1) if name == "image" else (-1, 5, -1, -1) if name == "logits" else (-1, -1, -1)

    def get_tensor_profile_shape(self, name, index):
        assert (name, index) == ("image", 0)
        return [(1, 3, 32, 32), (1, 3, 64, 64), (4, 3, 256, 256)]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shape, self.addresses = engine, None, {}

    def set_input_shape(self, name, shape):
        self.engine.calls.append(("set_input_shape", name, tuple(shape)))
        if shape[2] == 33:  # this engine has no kernel for odd heights
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n, _, h, w = self.shape
        return (n, 5, h, w) if name == "logits" else (n, h, w)

    def set_tensor_address(self, name, address):
        self.engine.calls.append(("set_tensor_address", name, address))
        self.addresses[name] = address
        return address % 256 == 0  # TensorRT refuses a misaligned pointer

    def execute_async_v3(self, stream_handle):
        self.engine.calls.append(("execute_async_v3", stream_handle))
        if self.engine.fail_execution:
            return False
        n, _, h, w = self.shape
        logits = expected_logits(_buffer(self.addresses["image"], self.shape, np.float32))
        _buffer(self.addresses["logits"], (n, 5, h, w), np.float32)[...] = logits
        _buffer(self.addresses["mask"], (n, h, w), np.int64)[...] = logits.argmax(1)
        return True


class FakeStream:
    cuda_stream = 0xC0FFEE

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass


@pytest.fixture
def cpu_runner(install, monkeypatch, tmp_path):
    """A TrtRunner over the stand-in, its buffers on the CPU (see the module docstring)."""
    calls = install(TRT11)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: FakeStream())
    monkeypatch.setattr(TrtRunner, "buffer_device", "cpu")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    meta = ModelMeta(arch="fcn8s-resnet18", num_classes=5, class_names=[f"c{i}" for i in range(5)], palette=[])

    def _open(data: bytes = b"PLAN") -> TrtRunner:
        plan.write_bytes(data)
        return TrtRunner(plan, meta, "fp16")

    return _open, calls


def test_runner_binds_buffers_executes_and_returns_int64_masks(cpu_runner):
    open_runner, calls = cpu_runner
    runner = open_runner()
    assert runner.profile == Profile((1, 32, 32), (1, 64, 64), (4, 256, 256))  # from the engine's profile 0
    assert [(s.name, s.dtype) for s in runner.inputs] == [("image", "float32")]
    assert [(s.name, s.dtype) for s in runner.outputs] == [("logits", "float32"), ("mask", "int64")]
    x = np.random.default_rng(0).normal(size=(2, 3, 37, 45)).astype(np.float32)
    prediction = runner.infer(x, need_logits=True)
    assert calls_named(calls, "set_input_shape")[-1] == ("image", (2, 3, 37, 45))
    assert calls_named(calls, "execute_async_v3") == [(FakeStream.cuda_stream,)]  # on the runner's stream
    np.testing.assert_allclose(prediction.logits, expected_logits(x), rtol=1e-6)
    assert prediction.mask.dtype == np.int64 and prediction.mask.shape == (2, 37, 45)
    np.testing.assert_array_equal(prediction.mask, expected_logits(x).argmax(1))
    y = np.random.default_rng(1).normal(size=(1, 3, 40, 50)).astype(np.float32)
    again = runner.infer(y)  # shapes change per call: the buffers follow the context's shapes
    assert again.mask.shape == (1, 40, 50)
    np.testing.assert_array_equal(again.mask, expected_logits(y).argmax(1))


def test_runner_reports_refused_shapes_failed_runs_and_bad_plans(cpu_runner):
    open_runner, _ = cpu_runner
    runner = open_runner()
    with pytest.raises(FcnDeployError, match=r"TensorRT refused input shape \(1, 3, 33, 64\)"):
        runner.infer(np.zeros((1, 3, 33, 64), np.float32))
    with pytest.raises(FcnDeployError, match=r"outside the engine's profile \(batch 1..4, height 32..256"):
        runner.infer(np.zeros((1, 3, 300, 64), np.float32))
    runner.engine.fail_execution = True
    with pytest.raises(FcnDeployError, match="TensorRT execution failed"):
        runner.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(FcnDeployError, match=r"could not deserialize the engine \(built by another TensorRT version or GPU\?\)"):
        open_runner(b"garbage")


def test_runner_refuses_types_it_cannot_bind(cpu_runner, monkeypatch):
    open_runner, _ = cpu_runner
    monkeypatch.setitem(FakeEngine.IO, "mask", ("OUTPUT", "BOOL"))
    assert open_runner().outputs[1].dtype == "bool"
    monkeypatch.setattr(FakeEngine, "get_tensor_dtype", lambda self, name: types.SimpleNamespace(name="FP8"))
    with pytest.raises(FcnDeployError, match="tensor 'image' has TensorRT type FP8, which this runner cannot bind"):
        open_runner()


def test_runner_needs_a_cuda_device(install, monkeypatch, tmp_path):
    install(TRT11)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"PLAN")
    meta = ModelMeta(arch="fcn8s-resnet18", num_classes=5, class_names=[f"c{i}" for i in range(5)], palette=[])
    with pytest.raises(FcnDeployError, match="needs a CUDA device, and torch sees none"):
        TrtRunner(plan, meta, "fp32")
    assert Path(plan).read_bytes() == b"PLAN"
