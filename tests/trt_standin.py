"""A TensorRT stand-in that really computes: the "plan" is the precision ONNX, executed by ONNX Runtime on the CPU.

CI has no GPU and no TensorRT, yet the TensorRT backend's whole path must be exercised there:
``build_engine`` -> ``build_plan`` -> the manifest (TensorRT version, compute capability) ->
``open_engine`` (version and GPU checks, a tampered plan refused) -> ``TrtRunner`` (buffers bound by
address, execution, argmax) -> validation at the product thresholds.  This module installs a
``tensorrt`` module whose builder serialises the parsed ONNX into the plan, and whose engine runs that
ONNX in ONNX Runtime, reading and writing the buffers through the addresses the runner bound.
Validating such an engine validates TensorRT's exact graph (what CI already does through ONNX
Runtime), and it proves the plumbing around it.  It proves nothing about TensorRT's kernels.

Install it per test with :func:`install` (monkeypatch only, so nothing outlives the test).
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types

import numpy as np

MAGIC = b"FCN-DEPLOY-TRT-STANDIN\n"
GPU = {"name": "NVIDIA Stand-in (ONNX Runtime on the CPU)", "compute_capability": "9.0", "cuda": "13.0"}
ORT_TO_TRT = {"tensor(float)": "FLOAT", "tensor(float16)": "HALF", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
              "tensor(uint8)": "UINT8", "tensor(int8)": "INT8", "tensor(bool)": "BOOL"}  # fmt: skip
TRT_TO_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32, "UINT8": np.uint8, "INT8": np.int8,
                "BOOL": np.bool_}  # fmt: skip


def _view(address: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    count = int(np.prod(shape))
    raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def make_module(version: str = "11.4.0.106") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "INT64": 8})
    trt.float32 = trt.DataType.FLOAT

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Network:
        def __init__(self):
            self.onnx: bytes | None = None
            self.input_name = "image"

        def get_input(self, index):
            return types.SimpleNamespace(name=self.input_name)

        # tensorrt_status's one-layer network, built by hand: an ONNX Identity here
        def add_input(self, name, dtype, shape):
            self.input_name, self.input_shape = name, tuple(shape)
            return types.SimpleNamespace(name=name)

        def add_identity(self, tensor):
            return types.SimpleNamespace(get_output=lambda index: tensor)

        def mark_output(self, tensor):
            from onnx import TensorProto, helper

            shape, name = self.input_shape, self.input_name
            graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "smoke",
                                      [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])  # fmt: skip
            self.onnx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            import onnx

            data = open(path, "rb").read()
            self.network.onnx = data
            self.network.input_name = onnx.load_from_string(data).graph.input[0].name
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = data

        def serialize(self):
            return b"STANDIN-CACHE" + self.data[:0]

    class Config:
        def __init__(self):
            self.flags = 1 << int(trt.BuilderFlag.TF32)
            self.profiles: list = []
            self.cache = TimingCache(b"")
            self.builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def get_flag(self, flag):
            return bool(self.flags & (1 << int(flag)))

        def set_flag(self, flag):
            self.flags |= 1 << int(flag)

        def clear_flag(self, flag):
            self.flags &= ~(1 << int(flag))

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data: bytes):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            profile = config.profiles[0].shapes if config.profiles else {}
            header = {"tensorrt": trt.__version__, "profile": profile, "tf32": config.get_flag(trt.BuilderFlag.TF32)}
            return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx

    class Engine:
        def __init__(self, header: dict, onnx_bytes: bytes):
            from fcn_deploy.onnxkit import create_session

            self.session = create_session(onnx_bytes, where="the stand-in plan")
            self.header = header
            self.inputs = self.session.get_inputs()
            self.outputs = self.session.get_outputs()
            self.names = [i.name for i in self.inputs] + [o.name for o in self.outputs]
            self.num_io_tensors = len(self.names)

        def _arg(self, name):
            return next(a for a in [*self.inputs, *self.outputs] if a.name == name)

        def get_tensor_name(self, index):
            return self.names[index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in {i.name for i in self.inputs} else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return getattr(trt.DataType, ORT_TO_TRT[self._arg(name).type])

        def get_tensor_shape(self, name):
            return tuple(d if isinstance(d, int) else -1 for d in self._arg(name).shape)

        def get_tensor_profile_shape(self, name, index):
            return [tuple(s) for s in self.header["profile"][name]]

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine: Engine):
            self.engine = engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self._output_shapes: dict[tuple, dict] = {}

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def _run(self, feed: dict) -> dict:
            names = [o.name for o in self.engine.outputs]
            return dict(zip(names, self.engine.session.run(names, feed)))

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            key = tuple(sorted(self.shapes.items()))
            if key not in self._output_shapes:  # learn the output shapes at this input shape once
                feed = {i.name: np.zeros(self.shapes[i.name], TRT_TO_NUMPY[ORT_TO_TRT[i.type]]) for i in self.engine.inputs}
                self._output_shapes[key] = {k: v.shape for k, v in self._run(feed).items()}
            return self._output_shapes[key][name]

        def set_tensor_address(self, name, address):
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream):
            feed = {}
            for arg in self.engine.inputs:
                shape = self.shapes.get(arg.name) or tuple(arg.shape)  # a static shape needs no set_input_shape
                feed[arg.name] = _view(self.addresses[arg.name], shape, TRT_TO_NUMPY[ORT_TO_TRT[arg.type]]).copy()
            for name, value in self._run(feed).items():
                target = _view(self.addresses[name], value.shape, value.dtype)
                target[...] = value
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            data = bytes(data)
            if not data.startswith(MAGIC):
                return None
            header, _, onnx_bytes = data[len(MAGIC) :].partition(b"\n")
            header = json.loads(header)
            if header["tensorrt"] != trt.__version__:
                return None
            return Engine(header, onnx_bytes)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


class FakeStream:
    cuda_stream = 0xC0FFEE

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass


def install(monkeypatch, version: str = "11.4.0.106") -> types.ModuleType:
    """Make TensorRT usable in this test: the stand-in module, a stand-in GPU, buffers on the CPU."""
    import torch

    from fcn_deploy.backends import tensorrt as trt_backend
    from fcn_deploy.backends.tensorrt import TrtRunner

    module = make_module(version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_backend, "_LOGGER", None)
    monkeypatch.setattr(trt_backend, "cuda_available", lambda: True)
    monkeypatch.setattr(trt_backend, "gpu_info", lambda: dict(GPU))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: FakeStream())
    monkeypatch.setattr(TrtRunner, "buffer_device", "cpu")
    return module
