"""The TensorRT runner's hot path and its checks at the door, on CPU through the TensorRT stand-in.

What this proves: buffers are allocated once per shape and rebound when the shape comes back; an
input at an address TensorRT cannot take is copied into an aligned buffer, an aligned one is bound
as it is; a refused address is an error; GPU time comes from two CUDA events on the runner's own
stream around the execution alone; ``cuda_graph`` captures once per shape and then only replays;
TensorRT outside 10.12..<12 is refused with the versions to install; ``tensorrt_status`` builds and
runs a one-layer network and reports a builder that cannot be created.  The events and the graph
are stand-ins here (no GPU): what CUDA measures, and that TensorRT's kernels capture, only a GPU
run shows (tests/test_tensorrt.py, scripts/gpu-check.sh).
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fcn_deploy.backends import Profile
from fcn_deploy.backends import tensorrt as trt_backend
from fcn_deploy.backends.tensorrt import TrtRunner, build_plan, import_tensorrt, tensorrt_status
from fcn_deploy.backends.tensorrt_checks import ALIGNMENT, aligned_empty
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.meta import ModelMeta

import trt_standin

META = ModelMeta(arch="fcn8s-resnet18", num_classes=4, class_names=[f"c{i}" for i in range(4)], palette=[])
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3, 1, 1) / 10 - 0.5


def expected(x: np.ndarray) -> np.ndarray:
    return np.einsum("oc,nchw->nohw", WEIGHTS[:, :, 0, 0], x)


@pytest.fixture
def runner(monkeypatch, tmp_path):
    """A TrtRunner over a stand-in plan of a 1x1 conv (3 -> 4 classes), buffers on the CPU."""
    trt_standin.install(monkeypatch)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4, "h", "w"])],
        initializer=[numpy_helper.from_array(WEIGHTS, "w")],
    )  # fmt: skip
    onnx_path, plan = tmp_path / "tiny.onnx", tmp_path / "tiny.plan"
    onnx_path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    build_plan(onnx_path, plan, Profile((1, 8, 8), (1, 16, 16), (2, 64, 64)))
    return TrtRunner(plan, META, "fp32")


def test_buffers_are_allocated_once_per_shape_and_rebound(runner):
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    first = runner.infer_on_device(torch.from_numpy(x))["logits"]
    np.testing.assert_allclose(first.numpy(), expected(x), rtol=1e-5, atol=1e-6)
    again = runner.infer_on_device(torch.from_numpy(x * 2))["logits"]
    assert again.data_ptr() == first.data_ptr()  # the same buffer, refilled
    other = runner.infer_on_device(torch.zeros(2, 3, 8, 24))["logits"]
    assert other.shape == (2, 4, 8, 24) and other.data_ptr() != first.data_ptr()
    back = runner.infer_on_device(torch.from_numpy(x))["logits"]  # the first shape again: its buffers, rebound
    assert back.data_ptr() == first.data_ptr() and runner.context.addresses["logits"] == first.data_ptr()
    np.testing.assert_allclose(back.numpy(), expected(x), rtol=1e-5, atol=1e-6)
    assert all(address % ALIGNMENT == 0 for address in runner.context.addresses.values())


def test_unaligned_inputs_are_copied_and_aligned_ones_bound_as_they_are(runner):
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    flat = torch.zeros(x.size + 64)
    start = next(i for i in range(1, 64) if (flat.data_ptr() + 4 * i) % ALIGNMENT)
    unaligned = flat[start : start + x.size].view(1, 3, 16, 16)
    unaligned.copy_(torch.from_numpy(x))
    out = runner.infer_on_device(unaligned)["logits"]
    assert runner.context.addresses["image"] != unaligned.data_ptr() and runner.context.addresses["image"] % ALIGNMENT == 0
    np.testing.assert_allclose(out.numpy(), expected(x), rtol=1e-5, atol=1e-6)
    aligned = aligned_empty(torch, (1, 3, 16, 16), torch.float32, "cpu")
    aligned.copy_(torch.from_numpy(x))
    runner.infer_on_device(aligned)
    assert runner.context.addresses["image"] == aligned.data_ptr()


def test_a_refused_tensor_address_is_an_error(runner, monkeypatch):
    monkeypatch.setattr(type(runner.context), "set_tensor_address", lambda self, name, address: False)
    with pytest.raises(FcnDeployError, match="TensorRT refused the address of tensor 'logits'"):
        runner.infer(np.zeros((1, 3, 16, 16), np.float32))


class FakeEvent:
    """``torch.cuda.Event``: records the host clock and the stream it was recorded on."""

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.at, self.stream = None, None

    def record(self, stream=None):
        self.at, self.stream = time.perf_counter(), stream

    def elapsed_time(self, end) -> float:
        return (end.at - self.at) * 1000.0


def test_gpu_time_comes_from_events_on_the_runners_stream_around_the_run(runner, monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(TrtRunner, "gpu_events", True)
    assert runner.last_gpu_ms is None
    executed = []
    original = type(runner.context).execute_async_v3

    def execute(context, stream):
        executed.append(time.perf_counter())
        time.sleep(0.02)
        return original(context, stream)

    monkeypatch.setattr(type(runner.context), "execute_async_v3", execute)
    runner.infer(np.zeros((1, 3, 16, 16), np.float32))
    start, end = runner._event_pair
    assert start.stream is runner.stream and end.stream is runner.stream
    assert start.at <= executed[0] <= end.at and 20.0 <= runner.last_gpu_ms < 1000.0


def test_cuda_graph_is_captured_once_per_shape_then_replayed(runner, monkeypatch):
    captures, replays = [], []

    class FakeGraph:
        def replay(self):
            replays.append(self)
            assert runner.context.execute_async_v3(runner.stream.cuda_stream)  # what the captured graph does

    @contextlib.contextmanager
    def capture(graph, stream=None, capture_error_mode="global"):
        assert stream is runner.stream and capture_error_mode == "thread_local"
        captures.append(graph)
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    runner.use_cuda_graph()
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
        out = runner.infer(x, need_logits=True)
        np.testing.assert_allclose(out.logits, expected(x), rtol=1e-5, atol=1e-6)  # the input went into the captured buffer
    runner.infer(np.zeros((1, 3, 8, 8), np.float32))
    assert len(captures) == 2 and len(replays) == 4  # one capture per shape, every call a replay
    assert runner.context.addresses["image"] == runner._buffers[(1, 3, 8, 8)][0].data_ptr()


@pytest.mark.parametrize("version", ["10.8.0.43", "12.0.0.1", "9.3.0"])
def test_tensorrt_outside_10_12_to_12_is_refused_with_what_to_install(monkeypatch, version):
    monkeypatch.setitem(sys.modules, "tensorrt", trt_standin.make_module(version))
    with pytest.raises(FcnDeployError, match=rf"TensorRT {version} is not supported: .*>= 10.12 and < 12.*'tensorrt-cu13>=10.12,<12'"):
        import_tensorrt()
    monkeypatch.setattr(trt_backend, "_STATUS", {})
    monkeypatch.setattr(trt_backend, "cuda_available", lambda: True)
    usable, why = tensorrt_status()
    assert not usable and f"TensorRT {version} is not supported" in why


def test_status_builds_and_runs_a_one_layer_network(monkeypatch):
    module = trt_standin.install(monkeypatch)
    monkeypatch.setattr(trt_backend, "_STATUS", {})
    assert tensorrt_status() == (True, f"TensorRT {module.__version__} built and ran a one-layer network")
    broken = trt_standin.install(monkeypatch)
    broken.Builder = lambda logger: None  # what TensorRT returns when it cannot reach the GPU
    usable, why = tensorrt_status()
    assert not usable and "could not create a builder" in why


def test_benchmark_takes_the_runners_gpu_time_and_notes_sizes_far_from_opt(runner, monkeypatch):
    from fcn_deploy.bench.local import row_notes
    from fcn_deploy.bench.workers import _gpu_timed

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(TrtRunner, "gpu_events", True)
    batch = torch.zeros(1, 3, 16, 16)
    timed = _gpu_timed(runner, lambda: runner.infer_on_device(batch), cuda=True)
    _, gpu_ms = timed()
    assert gpu_ms is not None and gpu_ms == runner.last_gpu_ms and gpu_ms >= 0
    assert _gpu_timed(runner, lambda: None, cuda=False)() == (None, None)
    info = {"backend": "tensorrt", "opt": list(runner.profile.opt), "tuned_at_opt": runner.tuned_at_opt}
    assert row_notes(info, 1, 16, 16) == [] and row_notes(info, 1, 20, 20) == []
    (far,) = row_notes(info, 1, 512, 512)
    assert "timed at 1x512x512, far from the 1x16x16 its tensorrt engine was tuned at" in far
    assert row_notes({**info, "tuned_at_opt": False}, 1, 512, 512) == []  # runtimes that do not tune at opt
    fallback = row_notes({"device_fallback": "asked to run on cuda, its session runs on cpu (providers: CPUExecutionProvider)"}, 1, 8, 8)
    assert fallback == ["asked to run on cuda, its session runs on cpu (providers: CPUExecutionProvider): this row is a CPU figure"]
