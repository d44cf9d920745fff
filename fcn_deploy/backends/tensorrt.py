"""TensorRT 10.x/11.x: build a strongly typed engine from the precision-transformed ONNX, and run it.

Kept thin on purpose: the precision is already in the ONNX (FP16 casts, INT8 Q/DQ), so the builder
only parses, sets one optimization profile, a workspace limit and a timing cache, and compiles.
TF32 is turned off (TensorRT enables it by default in 10.x and 11.x, as ``BuilderFlag.TF32``):
FP32 tensors, whether a whole FP32 engine or the layers an FP16/INT8 graph keeps in FP32, are then
computed in FP32 as they were validated on CPU, as Polygraphy does by default.  The manifest records
every builder flag that was set.

Before the builder runs, an INT8 graph is checked for Q/DQ nodes TensorRT's ONNX parser refuses
(:func:`qdq_problems`), so a wrong graph fails on any machine with the node named.

Device buffers and the stream come from torch (no pycuda).  Nothing here imports ``tensorrt`` at
module import time, so the package works without it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import FcnDeployError, require_file
from ..events import SILENT, Listener
from ..meta import ModelMeta
from .base import Backend, BackendOption, Capabilities, CompileOptions, Runner, TensorSpec, TritonSpec
from .profile import Profile
from .tensorrt_build import build_plan, builder_settings, network_flags  # noqa: F401 - the API tests import them here
from .tensorrt_checks import aligned_empty, is_aligned
from .tensorrt_qdq import qdq_problems

_LOGGER = None
INSTALL_HINT = "on a machine with an NVIDIA GPU run `pip install 'fcn-deploy[tensorrt]'` (see scripts/gpu-check.sh)"


#: Supported TensorRT versions: strong typing (every precision decided in the ONNX) is complete from
#: 10.12; 12 may change the API again.  pyproject's ``tensorrt`` extra has the same bounds.
MIN_VERSION, BELOW_VERSION = (10, 12), (12, 0)


def version_problem(version: str) -> str | None:
    """Why TensorRT ``version`` cannot be used, or None."""
    parts = tuple(int(p) for p in re.findall(r"\d+", str(version))[:2])
    if len(parts) == 2 and MIN_VERSION <= parts < BELOW_VERSION:
        return None
    return (f"TensorRT {version} is not supported: fcn-deploy needs TensorRT >= {MIN_VERSION[0]}.{MIN_VERSION[1]} and < "
            f"{BELOW_VERSION[0]} (strongly typed networks are complete from 10.12); install 'tensorrt-cu13>=10.12,<12' "
            "(or tensorrt-cu12 for a CUDA 12 driver)")  # fmt: skip


def import_tensorrt():
    """``import tensorrt`` (a supported version) or a clear error saying how to get it."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise FcnDeployError(f"TensorRT is not installed: {INSTALL_HINT}, or use another --backend") from exc
    problem = version_problem(getattr(trt, "__version__", "?"))
    if problem:
        raise FcnDeployError(problem)
    return trt


def trt_logger(trt):
    """One logger for the process: TensorRT keeps the first it is given and warns about others."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - a broken CUDA install
        return False


def tensorrt_status() -> tuple[bool, str]:
    """Whether TensorRT can be used here, and why not: it imports, is a supported version, a CUDA
    device is visible, and it builds and runs a one-layer network (so a broken runtime, a driver
    mismatch or missing CUDA libraries are found before a long build).  Checked once per process."""
    try:
        trt = import_tensorrt()
    except FcnDeployError as exc:
        return False, "the tensorrt package is not installed" if "not installed" in str(exc) else str(exc)
    if not cuda_available():
        return False, "no CUDA device is visible to torch"
    key = id(trt)
    if key not in _STATUS:
        from .tensorrt_checks import smoke_test

        problem = smoke_test(trt, TrtRunner.buffer_device)
        _STATUS[key] = (False, problem) if problem else (True, f"TensorRT {trt.__version__} built and ran a one-layer network")
    return _STATUS[key]


_STATUS: dict[int, tuple[bool, str]] = {}


def gpu_info() -> dict[str, str]:
    import torch

    if not torch.cuda.is_available():
        return {}
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}", "cuda": str(torch.version.cuda)}


#: Shapes whose buffers (and CUDA graphs) a runner keeps; validation's many sizes reuse the oldest slots.
MAX_BOUND_SHAPES = 8
#: TensorRT I/O types this runner can bind (anything else is refused rather than mis-sized).
BINDABLE = ("float32", "float16", "int32", "int64", "int8", "uint8", "bool")


class TrtRunner(Runner):
    """Runs a serialised TensorRT plan on torch CUDA tensors and a torch stream."""

    backend = "tensorrt"
    device = "cuda"
    capabilities = Capabilities(device_infer=True)
    #: Where buffers are allocated (torch device type); only a test of the binding logic changes it.
    buffer_device = "cuda"

    #: CUDA-event GPU timing: None follows the buffers (on when they are on a GPU); a test of the timing logic sets it.
    gpu_events: bool | None = None
    #: TensorRT tunes its tactics at the profile's opt shape (the benchmark notes timings far from it).
    tuned_at_opt = True

    def __init__(self, plan_path: str | Path, meta: ModelMeta, precision: str, profile: Profile | None = None, cuda_graph: bool = False):
        import torch

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise FcnDeployError(f"{plan_path}: a TensorRT engine needs a CUDA device, and torch sees none")
        self._torch = torch
        self.cuda = torch.device(self.buffer_device)
        path = require_file(plan_path, "TensorRT engine")
        self._runtime = trt.Runtime(trt_logger(trt))
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise FcnDeployError(f"{plan_path}: TensorRT could not deserialize the engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise FcnDeployError(f"{plan_path}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if not {"logits", "mask"} & set(self._outputs):
            raise FcnDeployError(f"{plan_path}: has neither a 'logits' nor a 'mask' output; rebuild from an fcn-deploy export")
        self._dtypes = {n: self._torch_dtype(n, path) for n in names}
        lo, opt, hi = self.engine.get_tensor_profile_shape(self._inputs[0], 0)
        super().__init__(path, meta, profile or Profile((lo[0], lo[2], lo[3]), (opt[0], opt[2], opt[3]), (hi[0], hi[2], hi[3])), precision)
        self.stream = torch.cuda.Stream()
        #: Replay one CUDA graph per shape instead of enqueuing the engine's kernels on each call.
        self.cuda_graph = cuda_graph
        self.last_gpu_ms: float | None = None
        self._buffers: dict[tuple[int, ...], tuple[Any, dict[str, Any]]] = {}
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._bound_shape: tuple[int, ...] | None = None
        self._event_pair = None

    def _torch_dtype(self, name: str, path: Path):
        trt_type = self.engine.get_tensor_dtype(name).name
        numpy_name = dtypes.from_tensorrt(trt_type)
        if numpy_name not in BINDABLE:
            raise FcnDeployError(f"{path}: tensor {name!r} has TensorRT type {trt_type}, which this runner cannot bind")
        return getattr(self._torch, numpy_name)

    def _spec(self, name: str) -> TensorSpec:
        return TensorSpec(
            name, dtypes.from_tensorrt(self.engine.get_tensor_dtype(name).name) or "?", tuple(self.engine.get_tensor_shape(name))
        )

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._outputs]

    def infer_on_device(self, batch):
        """Run on a CUDA tensor; returns ``{output name: CUDA tensor}`` (no host copies).

        The buffers are allocated once per shape and reused (the returned tensors are overwritten by
        the next call at that shape).  ``last_gpu_ms`` is the GPU time of the run alone, from CUDA
        events on the runner's stream (None where the buffers are not on a GPU)."""
        torch = self._torch
        n, _, h, w = batch.shape
        self.profile.check(n, h, w)
        name = self._inputs[0]
        shape = tuple(batch.shape)
        staging, outputs = self._bind(shape)
        batch = batch.to(device=self.cuda, dtype=self._dtypes[name])
        if self.cuda_graph or not batch.is_contiguous() or not is_aligned(batch):
            staging.copy_(batch)  # a CUDA graph reads its captured address; TensorRT needs 256-byte alignment
            batch = staging
        self._address(name, batch)
        self.stream.wait_stream(torch.cuda.current_stream())
        start, end = self._events() or (None, None)
        if self.cuda_graph:
            graph = self._graph(shape)
            if start is not None:
                start.record(self.stream)
            with torch.cuda.stream(self.stream):
                graph.replay()
        else:
            if start is not None:
                start.record(self.stream)
            self._execute()
        if end is not None:
            end.record(self.stream)
        self.stream.synchronize()
        self.last_gpu_ms = start.elapsed_time(end) if start is not None else None
        return outputs

    def _bind(self, shape: tuple[int, ...]):
        """This shape's staging input and output buffers (allocated on first use), set on the context."""
        torch = self._torch
        name = self._inputs[0]
        if shape == self._bound_shape:
            return self._buffers[shape]
        if not self.context.set_input_shape(name, shape):
            raise FcnDeployError(f"{self.path}: TensorRT refused input shape {shape} (outside the engine's profile?)")
        if shape not in self._buffers:
            if len(self._buffers) >= MAX_BOUND_SHAPES:  # the oldest shape's buffers and graph go
                oldest = next(iter(self._buffers))
                del self._buffers[oldest]
                self._graphs.pop(oldest, None)
            staging = aligned_empty(torch, shape, self._dtypes[name], self.cuda)
            outputs = {out: aligned_empty(torch, tuple(self.context.get_tensor_shape(out)), self._dtypes[out], self.cuda)
                       for out in self._outputs}  # fmt: skip
            self._buffers[shape] = (staging, outputs)
        for out, tensor in self._buffers[shape][1].items():
            self._address(out, tensor)
        self._bound_shape = shape
        return self._buffers[shape]

    def _address(self, name: str, tensor) -> None:
        if not is_aligned(tensor):
            raise FcnDeployError(f"{self.path}: tensor {name!r} is not 256-byte aligned, as TensorRT requires")
        if self.context.set_tensor_address(name, tensor.data_ptr()) is False:
            raise FcnDeployError(f"{self.path}: TensorRT refused the address of tensor {name!r} (not a device pointer, or misaligned)")

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise FcnDeployError(f"{self.path}: TensorRT execution failed")

    def _graph(self, shape: tuple[int, ...]):
        """The CUDA graph of one run at ``shape`` (trtexec's ``--useCudaGraph``), captured on first use
        after one plain run (TensorRT does its shape-dependent setup outside the capture)."""
        torch = self._torch
        if shape not in self._graphs:
            self._execute()
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self._execute()
            self._graphs[shape] = graph
        return self._graphs[shape]

    def _events(self):
        """A start and an end CUDA event (timing enabled), made once; None without a GPU."""
        timed = self.gpu_events if self.gpu_events is not None else self.cuda.type == "cuda"
        if not timed:
            return None
        if self._event_pair is None:
            self._event_pair = (self._torch.cuda.Event(enable_timing=True), self._torch.cuda.Event(enable_timing=True))
        return self._event_pair

    def infer_impl(self, batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        outputs = self.infer_on_device(self._torch.from_numpy(batch))
        logits = outputs.get("logits")
        mask = outputs["mask"] if "mask" in outputs else logits.argmax(1)  # argmax on the GPU
        return {
            "mask": mask.to(self._torch.int64).cpu().numpy(),
            "logits": logits.float().cpu().numpy() if need_logits and logits is not None else None,
        }

    def use_cuda_graph(self, enabled: bool = True) -> None:
        """Capture and replay a CUDA graph per shape (the benchmark's ``cuda_graph``)."""
        self.cuda_graph = enabled
        self._graphs.clear()

    def close(self) -> None:
        self._graphs.clear()
        self._buffers.clear()
        self.context = None
        self.engine = None


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "cuda"
    auto_rank = 0
    auto_reason = "TensorRT is the fastest engine on an NVIDIA GPU"
    int8_encoding = "int8-symmetric"
    #: TensorRT requires symmetric quantization: zero points must be 0.
    accepted_int8_encodings = ("int8-symmetric",)
    engine_suffix = "plan"
    install_hint = INSTALL_HINT
    options = (
        BackendOption("workspace_gib", "--workspace", float, 4.0, "TensorRT builder workspace limit (GiB)."),
        BackendOption("timing_cache", "--timing-cache", Path, None,
                      "TensorRT timing cache file, reused across builds (default: timing.cache next to the engine)."),
    )  # fmt: skip
    capabilities = Capabilities(device_infer=True)

    def status(self) -> tuple[bool, str]:
        return tensorrt_status()

    def compile(self, precision_onnx: Path, engine: Path, profile: Profile, meta: ModelMeta, options: CompileOptions,
                listener: Listener = SILENT) -> dict[str, Any]:  # fmt: skip
        import onnx

        problems = qdq_problems(onnx.load(str(precision_onnx), load_external_data=False))
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise FcnDeployError(
                f"{precision_onnx}: TensorRT's ONNX parser would refuse {len(problems)} Q/DQ node(s): {shown}. "
                "Build the INT8 graph for TensorRT (INT8 target tensorrt: symmetric int8, zero points 0, float biases)",
                options=("int8_target",),
            )
        values = self.option_values(options.backend_options)
        timing_cache = values["timing_cache"] or engine.parent / "timing.cache"  # reused by every later build there
        return build_plan(precision_onnx, engine, profile, values["workspace_gib"], timing_cache, listener=listener)

    def open(self, engine: Path, manifest: dict[str, Any], threads: int | None = None) -> Runner:
        self.require_usable(str(engine))
        return TrtRunner(engine, ModelMeta.from_dict(manifest["meta"], str(engine)), manifest["precision"],
                         Profile.from_dict(manifest["profile"]))  # fmt: skip

    def versions(self) -> dict[str, str]:
        try:
            import tensorrt  # type: ignore[import-not-found]
        except ImportError:
            return {}
        return {"tensorrt": tensorrt.__version__}

    def device_info(self) -> dict[str, Any]:
        return gpu_info()

    def manifest_problems(self, manifest: dict[str, Any]) -> list[str]:
        problems = []
        built = manifest.get("versions", {}).get("tensorrt")
        now = self.versions().get("tensorrt")
        if built != now:
            problems.append(f"built with TensorRT {built}, this machine has {now or 'none'}")
        want = manifest.get("device", {}).get("compute_capability")
        have = gpu_info().get("compute_capability")
        if want and have != want:
            problems.append(f"built for compute capability {want}, this GPU is {have or 'absent'}")
        return problems

    def triton_spec(self, manifest: dict[str, Any]) -> TritonSpec:
        version = manifest.get("versions", {}).get("tensorrt", "the one that built the plan")
        return TritonSpec(
            key="platform", value="tensorrt_plan", model_files=("model.plan",), device="gpu",
            release=f"the Triton release whose TensorRT is {version} (a plan runs only on the TensorRT version and GPU it was "
                    "built for; see NVIDIA's framework support matrix)",
        )  # fmt: skip

    def engine_io(self, engine: Path, manifest: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """A plan keeps the names and types of the ONNX it was built from: read them there."""
        graph = Path(manifest.get("precision_onnx", ""))
        if not graph.is_file():
            raise FcnDeployError(
                f"{engine}: its manifest names the graph it was built from, {graph}, which is not here; the plan's input and "
                "output names are read from it (copy it back, or rebuild the engine)"
            )
        return super().engine_io(graph, manifest)
