"""ONNX Runtime: runs any fcn-deploy ONNX (a plain export, an FP16 or INT8 Q/DQ graph, an ORT engine).

The ORT "engine" is the precision graph after ORT's offline optimisation at the extended level,
which is portable across CPUs (the ``all`` level writes layout-specific kernels).  Offline-optimised
graphs must run with the execution providers they were optimised for, so the manifest records them.
With ``onnxruntime-gpu`` installed, the TensorRT and CUDA execution providers are picked first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import FcnDeployError, require_file
from ..events import SILENT, Listener
from ..fileio import atomic_path
from ..meta import ONNX_META_KEY, ModelMeta, read_onnx_meta, read_onnx_props, write_onnx_meta
from ..onnxkit import (
    create_session,
    dims_of,
    dtype_of,
    graph_inputs,
    op_histogram,
    parameter_count,
    precision_problem,
    read_onnx,
    relax_input,
)
from .base import Backend, CompileOptions, Runner, TensorSpec, TritonSpec, upsample_bilinear
from .manifest import major_minor
from .profile import Profile, default_profile

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def choose_providers(requested: str | list[str] = "auto") -> list[str]:
    """``auto``: the TensorRT and CUDA execution providers when installed, then the CPU one; a list
    (from an engine manifest) is used as it is, if every provider in it is available."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if isinstance(requested, list):
        missing = [p for p in requested if p not in available]
        if missing:
            raise FcnDeployError(
                f"the engine was optimised for ONNX Runtime providers {requested}, and {missing} are not available "
                "here; rebuild it on this machine"
            )
        return requested
    if requested == "cpu":
        return ["CPUExecutionProvider"]
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if requested == "auto" else [requested]
    chosen = [p for p in preferred if p in available]
    if requested not in ("auto", "cpu") and not chosen:
        raise FcnDeployError(f"ONNX Runtime provider {requested} is not available here (have: {', '.join(available)})")
    return [*chosen, "CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    """An ONNX file in an ORT session.  ``meta`` (the engine's) lets an ONNX without fcn-deploy
    metadata, such as a foreign FP32 reference, be run; ``logits_output`` picks its logits output."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        providers: str | list[str] = "auto",
        threads: int | None = None,
        profile: Profile | None = None,
        precision: str | None = None,
        meta: ModelMeta | None = None,
        logits_output: str | None = None,
    ):
        path = require_file(path, "ONNX model")
        proto = read_onnx(path, load_data=False)
        meta = meta or read_onnx_meta(proto, str(path))
        dims = dims_of(proto.graph.input[0])
        precision = precision or read_onnx_props(proto).get("fcn_deploy.precision", "fp32")
        super().__init__(path, meta, profile or default_profile(meta, dims if len(dims) == 4 else None), precision)
        del proto
        self.session = create_session(self.path, providers=choose_providers(providers), threads=threads)
        self.providers = self.session.get_providers()
        if set(GPU_PROVIDERS) & set(self.providers):
            self.device = "cuda"
        self._input = self.session.get_inputs()[0]
        names = [o.name for o in self.session.get_outputs()]
        self._logits_name = logits_output or ("logits" if "logits" in names else None)
        self._mask_name = "mask" if "mask" in names else None
        if self._logits_name is not None and self._logits_name not in names:
            raise FcnDeployError(f"{path}: has no output {self._logits_name!r} (outputs: {', '.join(names)})")
        if self._logits_name is None and self._mask_name is None:
            raise FcnDeployError(f"{path}: has neither a 'logits' nor a 'mask' output; bring a foreign model in with `fcn-deploy adopt`")
        self.input_dtype = np.float16 if self._input.type == "tensor(float16)" else np.float32

    @staticmethod
    def _spec(arg) -> TensorSpec:
        return TensorSpec(arg.name, dtypes.from_ort(arg.type), tuple(arg.shape))

    @property
    def arithmetic(self) -> str:
        # ORT's CPU provider has few FP16 kernels: it inserts casts and computes the FP16 graph in FP32.
        return "fp16-emulated" if self.precision == "fp16" and self.device == "cpu" else self.precision

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(i) for i in self.session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(o) for o in self.session.get_outputs()]

    def infer_impl(self, batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        skip_logits = not need_logits and self._mask_name is not None
        wanted = [name for name in (None if skip_logits else self._logits_name, self._mask_name) if name]
        results = dict(zip(wanted, self.session.run(wanted, {self._input.name: batch})))
        return {"logits": results.get(self._logits_name), "mask": results.get(self._mask_name)}

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


class OnnxReferenceRunner(OnnxRuntimeRunner):
    """An FP32 ONNX as the validation reference: ONNX Runtime on the CPU in float32, at any size from
    the model's minimum up (an unbounded profile, whatever sizes the input declares).

    A foreign ONNX, without fcn-deploy metadata, is read with the engine's metadata; its logits are
    the output named ``logits``, else the one ``adopt`` recorded, else its single float 4-D output.
    When adopt added a resize to the engine's graph, the reference's low-resolution logits are
    brought to the input size here, by PyTorch's bilinear resize (an independent implementation).
    """

    def __init__(self, path: str | Path, engine_meta: ModelMeta, threads: int | None = None):
        path = require_file(path, "reference model")
        proto = read_onnx(path, load_data=False)
        problem = precision_problem(proto)
        if problem:
            raise FcnDeployError(
                f"{path}: {problem}; the reference must be the FP32 model (the checkpoint, or the ONNX the engine was "
                "exported or adopted from)"
            )
        #: Whether the metadata is the reference's own (else the engine's, lent to a foreign ONNX).
        self.has_own_meta = ONNX_META_KEY in read_onnx_props(proto)
        meta = read_onnx_meta(proto, str(path)) if self.has_own_meta else engine_meta
        fed = graph_inputs(proto)
        if len(fed) != 1 or dtype_of(fed[0]) != "float32" or len(dims_of(fed[0])) != 4:
            listed = ", ".join(f"{i.name} ({dtype_of(i)}, rank {len(dims_of(i))})" for i in fed) or "none"
            raise FcnDeployError(
                f"{path}: a reference takes one float32 image N x 3 x H x W, and its inputs are {listed}; "
                "pass the model the engine came from"
            )
        logits = self._pick_logits(proto, meta, path)
        super(OnnxRuntimeRunner, self).__init__(path, meta, default_profile(meta, bounded=False), "fp32")
        dims = dims_of(fed[0])
        if any(isinstance(d, int) for d in (dims[0], dims[2], dims[3])):  # accept every size the engine accepts
            full = read_onnx(path)
            relax_input(full, fed[0].name)
            source: str | bytes = full.SerializeToString()
            del full
        else:
            source = str(path)
        del proto
        self.session = create_session(source, where=path, threads=threads)
        self.providers = self.session.get_providers()
        self._input = self.session.get_inputs()[0]
        self._logits_name, self._mask_name = logits, None
        self.input_dtype = np.float32
        self._resize = bool(meta.adopted.get("resize"))

    @staticmethod
    def _pick_logits(proto, meta: ModelMeta, path: Path) -> str:
        outputs = list(proto.graph.output)
        names = [o.name for o in outputs]
        recorded = meta.adopted.get("output", {}).get("name")
        for name in ("logits", recorded):
            if name in names:
                return name
        floats = [o for o in outputs if dtype_of(o) == "float32" and len(dims_of(o)) in (0, 4)]
        if len(floats) > 1:
            floats = [o for o in floats if dims_of(o)[1:2] == [meta.num_classes]]
        if len(floats) == 1:
            return floats[0].name
        listed = ", ".join(f"{o.name} ({dtype_of(o)} {dims_of(o)})" for o in outputs)
        raise FcnDeployError(
            f"{path}: cannot tell which output holds the {meta.num_classes}-class logits (outputs: {listed}); "
            "adopt it with `fcn-deploy adopt`, naming the output to keep, and pass the adopted ONNX as the reference",
            options=("reference",),
        )

    def infer_impl(self, batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        logits = self.session.run([self._logits_name], {self._input.name: batch})[0]
        height, width = batch.shape[2:]
        if logits.ndim == 4 and tuple(logits.shape[2:]) != (height, width):
            if not self._resize:
                raise FcnDeployError(
                    f"{self.path}: gives {logits.shape[2]}x{logits.shape[3]} logits for a {height}x{width} input; "
                    "a reference must output logits at the input size"
                )
            logits = upsample_bilinear(logits, height, width)
        return {"logits": logits, "mask": None}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    auto_rank = 20
    auto_reason = "ONNX Runtime runs every precision graph on any CPU"
    int8_encoding = "uint8-asymmetric"
    engine_suffix = "ort.onnx"
    install_hint = "pip install onnxruntime (or onnxruntime-gpu on a CUDA machine)"

    def status(self) -> tuple[bool, str]:
        try:
            import onnxruntime
        except ImportError:
            return False, "the onnxruntime package is not installed"
        return True, f"onnxruntime {onnxruntime.__version__} with {', '.join(choose_providers('auto'))}"

    def compile(self, precision_onnx: Path, engine: Path, profile: Profile, meta: ModelMeta, options: CompileOptions,
                listener: Listener = SILENT) -> dict[str, Any]:  # fmt: skip
        import onnx

        providers = choose_providers("auto")
        with atomic_path(engine) as tmp:
            create_session(precision_onnx, providers=providers, optimization="extended", optimized_path=tmp)
            optimized = onnx.load(str(tmp))
            write_onnx_meta(optimized, meta, {"fcn_deploy.precision": options.precision, "fcn_deploy.backend": self.name})
            onnx.save(optimized, str(tmp), save_as_external_data=False)
        return {"providers": providers, "optimization": "ORT_ENABLE_EXTENDED (offline)"}

    def open(self, engine: Path, manifest: dict[str, Any], threads: int | None = None) -> Runner:
        return OnnxRuntimeRunner(
            engine, providers=manifest.get("build", {}).get("providers") or "auto", threads=threads,
            profile=Profile.from_dict(manifest["profile"]), precision=manifest["precision"],
            meta=ModelMeta.from_dict(manifest["meta"], str(engine)),
        )  # fmt: skip

    def engine_device(self, manifest: dict[str, Any]) -> str:
        providers = manifest.get("build", {}).get("providers") or []
        return "cuda" if set(GPU_PROVIDERS) & set(providers) else "cpu"

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    def device_info(self) -> dict[str, Any]:
        from ..machine import cpu_info

        return {"providers": choose_providers("auto"), **cpu_info()}

    def manifest_problems(self, manifest: dict[str, Any]) -> list[str]:
        built = manifest.get("versions", {}).get("onnxruntime")
        now = self.versions()["onnxruntime"]
        if major_minor(built) != major_minor(now):
            return [f"built with ONNX Runtime {built}, this machine has {now}"]
        return []

    def triton_spec(self, manifest: dict[str, Any]) -> TritonSpec:
        version = manifest.get("versions", {}).get("onnxruntime", "1.27")
        return TritonSpec(
            key="platform", value="onnxruntime_onnx", model_files=("model.onnx",),
            device="gpu" if self.engine_device(manifest) == "cuda" else "cpu",
            release=f"a Triton release whose ONNX Runtime is {version} or newer",
        )  # fmt: skip

    def describe_engine(self, engine: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        model = read_onnx(engine, load_data=False)
        return {"nodes": sum(op_histogram(model).values()), "op_types": op_histogram(model), "parameters": parameter_count(model)}
