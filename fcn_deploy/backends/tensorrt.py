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

import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import FcnDeployError, require_file
from ..events import SILENT, Listener
from ..fileio import atomic_path, atomic_write_bytes
from ..meta import ModelMeta
from .base import Backend, BackendOption, Capabilities, CompileOptions, Profile, Runner, TensorSpec, TritonSpec

_LOGGER = None
INSTALL_HINT = "on a machine with an NVIDIA GPU run `pip install 'fcn-deploy[tensorrt]'` (see scripts/gpu-check.sh)"


def import_tensorrt():
    """``import tensorrt`` or a clear error saying how to get it."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise FcnDeployError(f"TensorRT is not installed: {INSTALL_HINT}, or use another --backend") from exc
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
    """Whether TensorRT can be used here, and why not."""
    try:
        import_tensorrt()
    except FcnDeployError:
        return False, "the tensorrt package is not installed"
    if not cuda_available():
        return False, "no CUDA device is visible to torch"
    return True, "tensorrt imports and a CUDA device is present"


def gpu_info() -> dict[str, str]:
    import torch

    if not torch.cuda.is_available():
        return {}
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}", "cuda": str(torch.version.cuda)}


#: Quantized types TensorRT's ONNX parser takes in Q/DQ nodes (int4/fp4/fp8 besides int8; never uint8 or int32).
_TRT_QUANT_TYPES = {"INT8", "INT4", "FLOAT8E4M3FN", "FLOAT4E2M1"}


def qdq_problems(model) -> list[str]:
    """Q/DQ nodes of ``model`` (an ``onnx.ModelProto``) that TensorRT's ONNX parser refuses, one line each
    naming the node: a quantized type other than int8/int4/fp8/fp4 (an int32 bias Q/DQ, uint8
    activations), a non-zero zero point (TensorRT quantizes symmetrically), or per-channel scales on
    an activation (only weights may be quantized per channel).  Pure ONNX: runs on any machine."""
    import onnx
    from onnx import numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    producer = {out: node for node in model.graph.node for out in node.output}

    def type_name(tensor) -> str:
        return onnx.TensorProto.DataType.Name(tensor.data_type)

    def quantized_type(node) -> str | None:
        if node.op_type == "DequantizeLinear":
            if node.input[0] in constants:
                return type_name(constants[node.input[0]])
            source = producer.get(node.input[0])
            return quantized_type(source) if source is not None and source.op_type == "QuantizeLinear" else None
        if len(node.input) > 2 and node.input[2] in constants:
            return type_name(constants[node.input[2]])
        for attr in node.attribute:
            if attr.name == "output_dtype" and attr.i:
                return onnx.TensorProto.DataType.Name(attr.i)
        return "UINT8"  # ONNX's default for a QuantizeLinear without a zero point

    problems = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name = f"{node.op_type} node {node.name or f'#{index}'}"
        kind = quantized_type(node)
        if kind is not None and kind not in _TRT_QUANT_TYPES:
            what = "an int32 bias Q/DQ" if kind == "INT32" else f"{kind.lower()} quantization"
            problems.append(f"{name}: {what} (TensorRT quantizes to int8, int4, fp8 or fp4 only)")
        if len(node.input) > 2 and node.input[2] in constants:
            zero_point = numpy_helper.to_array(constants[node.input[2]])
            if zero_point.size and (zero_point.astype("float64") != 0).any():
                problems.append(f"{name}: non-zero zero point (TensorRT needs symmetric quantization, zero point 0)")
        data = node.input[0]
        is_weight = data in constants or (node.op_type == "DequantizeLinear" and data in producer
                                          and producer[data].op_type == "QuantizeLinear" and producer[data].input[0] in constants)  # fmt: skip
        scale = constants.get(node.input[1]) if len(node.input) > 1 else None
        if not is_weight and scale is not None and numpy_helper.to_array(scale).size > 1:
            problems.append(f"{name}: per-channel scales on an activation (TensorRT quantizes activations per tensor)")
    return problems


def network_flags(trt) -> int:
    """``create_network`` flags for a strongly typed network: 11.x is always strongly typed (its
    ``STRONGLY_TYPED`` is deprecated, ignored, and 0); 10.x opts in with ``1 << STRONGLY_TYPED`` (1)."""
    if int(str(trt.__version__).split(".")[0]) >= 11:
        return 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        raise FcnDeployError(f"TensorRT {trt.__version__} cannot build strongly typed networks; install TensorRT 10.x or 11.x")
    return 1 << int(strongly_typed)


def builder_settings(trt, config) -> dict[str, object]:
    """What the manifest records about the builder: every flag that is set, TF32, the optimisation level."""
    members = getattr(trt.BuilderFlag, "__members__", {})
    flags = sorted(name for name, flag in members.items() if config.get_flag(flag))
    settings: dict[str, object] = {"flags": flags, "tf32": "TF32" in flags}
    level = getattr(config, "builder_optimization_level", None)
    if level is not None:
        settings["builder_optimization_level"] = int(level)
    return settings


def build_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: Profile,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
    listener: Listener = SILENT,
) -> dict[str, object]:
    """Parse ``onnx_path``, build a serialised plan for ``profile`` and write it atomically."""
    trt = import_tensorrt()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    flags = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            node = f"node {err.node()} ({err.node_name()}, {err.node_operator()})" if hasattr(err, "node_name") else ""
            errors.append(f"{node}: {err.desc()}".strip(": "))
        raise FcnDeployError(f"{onnx_path}: TensorRT could not parse the ONNX: " + " | ".join(errors or ["unknown error"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default: FP32 tensors would be multiplied with 10-bit mantissas
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    shapes = [(n, 3, h, w) for n, h, w in (profile.min, profile.opt, profile.max)]
    opt_profile.set_shape(name, *shapes)
    config.add_optimization_profile(opt_profile)
    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    reused = bool(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        listener.note(f"timing cache {timing_cache} does not match this TensorRT/GPU; starting a new one", level="warning")
        reused = False
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=True):
            raise FcnDeployError(f"TensorRT {trt.__version__} could not start a timing cache; build without one", options=("timing_cache",))
    listener.note(f"building TensorRT {trt.__version__} engine for {shapes[0]}..{shapes[2]} (opt {shapes[1]})")
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise FcnDeployError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(plan))
    written = b""
    if timing_cache is not None:
        written = bytes(config.get_timing_cache().serialize())
        atomic_write_bytes(timing_cache, written)
    return {
        "build_seconds": time.perf_counter() - started,
        "tensorrt": trt.__version__,
        "network_flags": flags,
        "strongly_typed": True,
        "builder": builder_settings(trt, config),
        "workspace_bytes": int(workspace_gib * (1 << 30)),
        "timing_cache": str(timing_cache or ""),
        "timing_cache_bytes_read": len(cache_bytes),
        "timing_cache_reused": reused,
        "timing_cache_bytes_written": len(written),
    }


#: TensorRT I/O types this runner can bind (anything else is refused rather than mis-sized).
BINDABLE = ("float32", "float16", "int32", "int64", "int8", "uint8", "bool")


class TrtRunner(Runner):
    """Runs a serialised TensorRT plan on torch CUDA tensors and a torch stream."""

    backend = "tensorrt"
    device = "cuda"
    capabilities = Capabilities(device_infer=True)
    #: Where buffers are allocated (torch device type); only a test of the binding logic changes it.
    buffer_device = "cuda"

    def __init__(self, plan_path: str | Path, meta: ModelMeta, precision: str, profile: Profile | None = None):
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
            raise FcnDeployError(
                f"{plan_path}: TensorRT could not deserialize the engine (built by another TensorRT version or GPU?)"
            )
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
        super().__init__(
            path, meta, profile or Profile((lo[0], lo[2], lo[3]), (opt[0], opt[2], opt[3]), (hi[0], hi[2], hi[3])), precision
        )
        self.stream = torch.cuda.Stream()

    def _torch_dtype(self, name: str, path: Path):
        trt_type = self.engine.get_tensor_dtype(name).name
        numpy_name = dtypes.from_tensorrt(trt_type)
        if numpy_name not in BINDABLE:
            raise FcnDeployError(f"{path}: tensor {name!r} has TensorRT type {trt_type}, which this runner cannot bind")
        return getattr(self._torch, numpy_name)

    def _spec(self, name: str) -> TensorSpec:
        return TensorSpec(name, dtypes.from_tensorrt(self.engine.get_tensor_dtype(name).name) or "?", tuple(self.engine.get_tensor_shape(name)))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._outputs]

    def infer_on_device(self, batch):
        """Run on a CUDA tensor; returns ``{output name: CUDA tensor}`` (no host copies)."""
        torch = self._torch
        n, _, h, w = batch.shape
        self.profile.check(n, h, w)
        name = self._inputs[0]
        batch = batch.to(device=self.cuda, dtype=self._dtypes[name]).contiguous()
        if not self.context.set_input_shape(name, tuple(batch.shape)):
            raise FcnDeployError(f"{self.path}: TensorRT refused input shape {tuple(batch.shape)} (outside the engine's profile?)")
        self.context.set_tensor_address(name, batch.data_ptr())
        outputs = {}
        for out in self._outputs:
            tensor = torch.empty(tuple(self.context.get_tensor_shape(out)), dtype=self._dtypes[out], device=self.cuda)
            self.context.set_tensor_address(out, tensor.data_ptr())
            outputs[out] = tensor
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise FcnDeployError(f"{self.path}: TensorRT execution failed")
        self.stream.synchronize()
        return outputs

    def infer_impl(self, batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        outputs = self.infer_on_device(self._torch.from_numpy(batch))
        logits = outputs.get("logits")
        mask = outputs["mask"] if "mask" in outputs else logits.argmax(1)  # argmax on the GPU
        return {
            "mask": mask.to(self._torch.int64).cpu().numpy(),
            "logits": logits.float().cpu().numpy() if need_logits and logits is not None else None,
        }

    def close(self) -> None:
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
