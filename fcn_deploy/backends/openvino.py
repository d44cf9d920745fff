"""OpenVINO: the fastest engine on x86 CPUs, compiled from the same precision graphs as every backend.

The engine is OpenVINO IR (``.xml`` graph + ``.bin`` weights) rather than a compiled blob: IR is
portable across CPUs and OpenVINO releases, it is what Triton's ``openvino`` backend serves, and
compiling it at load takes well under a second for these models, whereas a compiled blob is tied
to the CPU's ISA and the exact plugin version.  Weights are saved uncompressed
(``compress_to_fp16=False``): the precision lives in the ONNX, never in a saving default.

The inference precision hint is set explicitly (``PRECISION_HINTS``; the manifest records it with
the precision OpenVINO actually chose, and the runner reuses it).  On CPUs with AVX512-BF16 or AMX,
OpenVINO otherwise runs FP32 graphs in bf16 without saying so, with different numerics: measured
here (Zen 4, 2 threads, the demo model at 512x512), FP32 at the default hint ran in bf16 and failed
FP32 validation at 7 of 14 sizes.

* FP32: ``f32``.
* FP16: ``f16`` where the CPU computes FP16 fast (OpenVINO lists ``FP16`` among the CPU's
  optimization capabilities, and the CPU has AMX-FP16 or is Arm: :func:`fast_fp16`; AVX512-FP16
  alone measured slower than FP32), otherwise ``f32``, which computes the
  FP16 graph (FP16-rounded weights) in FP32, as ONNX Runtime does on a CPU.  Never ``bf16``:
  OpenVINO's ``f16`` hint silently maps to bf16 on CPUs without FP16 units (Zen 4 here), and bf16
  is coarser than FP16.  Measured: bf16 ran the demo model's FP16 graph in 16.9 ms against 27.4 ms
  at f32 and still passed FP16 validation there, but on random-weight torchvision models (issue 12's
  tests) it agreed on only 94.5-98.4 % of pixels, where FP16 arithmetic reaches 99.4-99.9 %.
* INT8: ``f32`` for the layers left in float: 12.0 ms against 13.0 ms at the bf16 default.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes
from ..data.images import preprocess
from ..errors import FcnDeployError, first_line, require_file
from ..events import SILENT, Listener
from ..meta import ModelMeta
from .base import Backend, Capabilities, CompileOptions, Runner, TensorSpec, TritonSpec
from .manifest import major_minor
from .openvino_graphs import with_argmax_mask, with_image_input, with_matmul_upsampling
from .profile import Profile

INSTALL_HINT = "pip install openvino (a dependency of fcn-deploy; reinstall with `pip install -e .`)"
#: ``INFERENCE_PRECISION_HINT`` per precision graph (see the module docstring; measured in the README).
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
STATIC_SHAPES = 16  # static-shape graphs an OpenVINO runner keeps compiled (see OpenVinoRunner._request_for)


def precision_hint(core, precision: str) -> str:
    """The hint for ``precision`` on this CPU: FP16 only where the CPU computes FP16 fast."""
    if precision == "fp16" and not fast_fp16(core):
        return "f32"
    return PRECISION_HINTS[precision]


def fast_fp16(core) -> bool:
    """Whether OpenVINO's ``f16`` beats ``f32`` here: it lists FP16, and the CPU has AMX-FP16 or is Arm.

    AVX512-FP16 alone is not enough: there ``f16`` ran slower than FP32 and flipped confident pixels
    of a random-weight DeepLabV3 (README, "Backends, engines and the manifest")."""
    from ..machine import cpu_info

    if "FP16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return False
    isa = cpu_info()["isa"]
    return "amx_fp16" in isa or "asimd" in isa  # type: ignore[operator]


def import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        raise FcnDeployError(f"OpenVINO is not installed: {INSTALL_HINT}, or use another --backend") from exc
    return ov


def weights_path(engine: Path) -> Path:
    """The ``.bin`` beside the ``.xml`` (for any engine name, ``<name minus suffix>.bin``)."""
    engine = Path(engine)
    if engine.suffix == ".bin":
        raise FcnDeployError(f"{engine}: an OpenVINO engine name must not end in .bin (that is its weights file); use .xml")
    return engine.with_suffix(".bin")


class OpenVinoRunner(Runner):
    backend = "openvino"
    capabilities = Capabilities(uint8_images=True)

    def __init__(self, xml: Path, meta: ModelMeta, precision: str, profile: Profile, config: dict[str, str],
                 threads: int | None = None):  # fmt: skip
        ov = import_openvino()
        super().__init__(require_file(xml, "OpenVINO engine"), meta, profile, precision)
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", **config}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        try:
            model = core.read_model(model=str(xml), weights=str(weights_path(xml)))
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise FcnDeployError(f"{xml}: OpenVINO cannot compile it ({first_line(exc)})") from exc
        self.config = config
        self.request = self.compiled.create_infer_request()
        self._core, self._model = core, model
        self._seen: Counter[tuple[int, ...]] = Counter()
        self._static: OrderedDict[tuple[int, ...], Any] = OrderedDict()  # shape -> infer request, most recent last
        names = [o.get_names() for o in self.compiled.outputs]  # a tensor may carry several names
        self._logits = next((i for i, n in enumerate(names) if "logits" in n), None)
        self._mask = next((i for i, n in enumerate(names) if "mask" in n), None)
        if self._logits is None and self._mask is None:
            raise FcnDeployError(f"{xml}: has neither a 'logits' nor a 'mask' output; rebuild it from an fcn-deploy ONNX")

    @property
    def arithmetic(self) -> str:
        """What OpenVINO computes the float layers in: the FP16 graph in ``fp16`` where the CPU has
        FP16 units, else in FP32 (``fp16-emulated``); INT8 graphs say ``int8``."""
        if self.precision == "int8":
            return "int8"
        chosen = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if self.precision == "fp16" and chosen == "f32":
            return "fp16-emulated"
        return {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(chosen, chosen)

    @staticmethod
    def _spec(port) -> TensorSpec:
        shape = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
        return TensorSpec(port.get_any_name(), dtypes.from_openvino(port.get_element_type().get_type_name()), shape)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(p) for p in self.compiled.inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(p) for p in self.compiled.outputs]

    def _request_for(self, shape: tuple[int, ...], mask_only: bool, images: bool = False) -> tuple[Any, int | None, int | None] | None:
        """The infer request for the NCHW ``shape``, with the indices of its logits and mask outputs.

        OpenVINO's CPU kernels run a static shape faster than the dynamic-shape graph, so a shape
        seen a second time (video, a benchmark, steady serving) gets a graph reshaped and compiled
        for it, kept for the :data:`STATIC_SHAPES` most recent shapes.  Shapes seen once
        (validation's many sizes) run the dynamic graph and cost no compile.  A final bilinear resize
        runs as two matrix products (:func:`with_matmul_upsampling`).  Where only the mask is
        wanted, the static graph ends in the argmax (:func:`with_argmax_mask`), so the float logits
        are neither laid out for output nor copied back; where the caller has uint8 images, it
        starts with their normalisation (:func:`with_image_input`).  None: an image shape seen
        once, which the caller normalises in numpy for the dynamic graph."""
        key = (shape, mask_only, images)
        if key in self._static:
            self._static.move_to_end(key)
            return self._static[key]
        self._seen[key] += 1
        dynamic = self._model.inputs[0].get_partial_shape().is_dynamic
        if self._seen[key] < 2 or not (dynamic or images):
            return None if images else (self.request, self._logits, self._mask)
        model = self._model.clone()
        if dynamic:
            model.reshape({model.inputs[0].get_any_name(): list(shape)})
        with_matmul_upsampling(model)
        if mask_only:
            model = with_argmax_mask(model, self._logits, np.uint8 if self.meta.num_classes <= 256 else np.int32)
        if images:
            model = with_image_input(model, self.meta.mean, self.meta.std)
        request = self._core.compile_model(model, "CPU", self.config).create_infer_request()
        self._static[key] = (request, None, 0) if mask_only else (request, self._logits, self._mask)
        if len(self._static) > STATIC_SHAPES:
            self._static.popitem(last=False)
        return self._static[key]

    def infer_impl(self, batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        mask_only = not need_logits and self._mask is None
        return self._run(self._request_for(tuple(batch.shape), mask_only), batch, need_logits)  # type: ignore[arg-type]

    def infer_images_impl(self, images: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        n, h, w, _ = images.shape
        found = self._request_for((n, 3, h, w), not need_logits and self._mask is None, images=True)
        if found is None:
            return self.infer_impl(preprocess(images, self.meta.mean, self.meta.std), need_logits)
        return self._run(found, images, need_logits)

    def _run(self, found: tuple[Any, int | None, int | None], batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        request, logits, mask = found
        request.infer({0: batch}, share_inputs=True)
        get = lambda index: None if index is None else request.get_output_tensor(index).data.copy()  # noqa: E731
        return {"logits": get(logits) if need_logits or mask is None else None, "mask": get(mask)}

    def share_cores(self) -> None:
        """OpenVINO pins its threads under the latency hint on Linux, each process from the first
        core on, so two served instances queued on the same cores (measured in the README)."""
        if self.config.get("ENABLE_CPU_PINNING") == "NO":
            return
        self.config = {**self.config, "ENABLE_CPU_PINNING": "NO"}
        self.compiled = self._core.compile_model(self._model, "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        self._static.clear()

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self._static.clear()


class OpenVinoBackend(Backend):
    name = "openvino"
    auto_rank = 10
    auto_reason = "OpenVINO is the fastest installed CPU engine (INT8 measured 1.2x ONNX Runtime's)"
    int8_encoding = "uint8-asymmetric-hardswish"
    engine_suffix = "openvino.xml"
    install_hint = INSTALL_HINT

    def status(self) -> tuple[bool, str]:
        try:
            ov = import_openvino()
        except FcnDeployError:
            return False, "the openvino package is not installed"
        try:
            devices = ov.Core().available_devices
        except RuntimeError as exc:  # pragma: no cover - a broken install
            return False, f"OpenVINO cannot list devices ({exc})"
        if "CPU" not in devices:
            return False, f"OpenVINO sees no CPU device (devices: {devices})"
        return True, f"openvino {ov.__version__} on {self.device_info().get('cpu', 'CPU')}"

    def engine_files(self, engine: Path) -> list[Path]:
        return [Path(engine), weights_path(engine)]

    def compile(self, precision_onnx: Path, engine: Path, profile: Profile, meta: ModelMeta, options: CompileOptions,
                listener: Listener = SILENT) -> dict[str, Any]:  # fmt: skip
        ov = import_openvino()
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision_hint(core, options.precision)}
        try:
            model = core.read_model(str(precision_onnx))
            compiled = core.compile_model(model, "CPU", config)  # fail here, at build time, rather than at first use
            effective = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            del compiled
        except RuntimeError as exc:
            raise FcnDeployError(f"{precision_onnx}: OpenVINO cannot compile it ({first_line(exc)})") from exc
        model.set_rt_info(json.dumps(meta.to_dict()), ["fcn_deploy", "meta"])
        model.set_rt_info(options.precision, ["fcn_deploy", "precision"])
        xml, weights = self.engine_files(engine)
        with tempfile.TemporaryDirectory(prefix=f".{engine.name}.", dir=engine.parent) as tmp:
            try:
                ov.save_model(model, str(Path(tmp, "model.xml")), compress_to_fp16=False)
            except RuntimeError as exc:
                raise FcnDeployError(f"{engine}: OpenVINO could not save the engine ({first_line(exc)}); "
                                     "check the disk and the folder's permissions") from exc  # fmt: skip
            # Each file appears under its final name only when whole; the manifest, written
            # last, hashes both, so a half-replaced pair never opens.
            shutil.move(str(Path(tmp, "model.bin")), weights)
            os.replace(Path(tmp, "model.xml"), xml)
        listener.note(f"openvino: {options.precision} graph compiles to {effective} arithmetic on this CPU")
        return {"config": config, "inference_precision": effective, "format": "OpenVINO IR (xml + bin), weights uncompressed"}

    def open(self, engine: Path, manifest: dict[str, Any], threads: int | None = None) -> Runner:
        return OpenVinoRunner(
            Path(engine), ModelMeta.from_dict(manifest["meta"], str(engine)), manifest["precision"],
            Profile.from_dict(manifest["profile"]), manifest.get("build", {}).get("config", {}), threads,
        )  # fmt: skip

    def versions(self) -> dict[str, str]:
        try:
            import openvino
        except ImportError:
            return {}
        return {"openvino": openvino.__version__.split("-")[0]}

    def device_info(self) -> dict[str, Any]:
        from ..machine import cpu_info

        return cpu_info()

    def manifest_problems(self, manifest: dict[str, Any]) -> list[str]:
        built = manifest.get("versions", {}).get("openvino")
        now = self.versions().get("openvino")
        if now is None:
            return [f"OpenVINO is not installed ({INSTALL_HINT})"]
        hint = manifest.get("build", {}).get("config", {}).get("INFERENCE_PRECISION_HINT")
        if hint == "f16" and precision_hint(import_openvino().Core(), "fp16") != "f16":
            return [
                "built to run in OpenVINO's f16 on a CPU with fast FP16 arithmetic, and this CPU has none (f16 would run "
                "slower than FP32 here, or silently in bf16)"
            ]
        if built and tuple(map(int, major_minor(built).split("."))) > tuple(map(int, major_minor(now).split("."))):
            return [f"built with OpenVINO {built}, newer than this machine's {now}"]
        return []

    def triton_spec(self, manifest: dict[str, Any]) -> TritonSpec:
        version = manifest.get("versions", {}).get("openvino", "2024.0")
        return TritonSpec(
            key="backend", value="openvino", model_files=("model.xml", "model.bin"), batching=False,
            parameters={"PERFORMANCE_HINT": "LATENCY"}, release=f"a Triton release whose OpenVINO is {version} or newer",
            notes=("Triton's OpenVINO backend cannot pin the inference precision: on CPUs with bf16 arithmetic it runs FP32 "
                   "graphs in bf16; check the served masks with `fcn-deploy validate --server`",),
        )  # fmt: skip

    def engine_io(self, engine: Path, manifest: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        ov = import_openvino()
        model = ov.Core().read_model(str(engine), str(weights_path(engine)))
        spec = lambda port: (port.get_any_name(), dtypes.from_openvino(port.get_element_type().get_type_name()))  # noqa: E731
        return [spec(p) for p in model.inputs], [spec(p) for p in model.outputs]

    def intermediate_outputs(self, model: Any, names: list[str]) -> Any:
        """The graph compiled as INT8 engines are (f32 for the float layers), with ``names`` as extra outputs."""
        ov = import_openvino()
        core = ov.Core()
        with tempfile.TemporaryDirectory(prefix="fcn-deploy-ov-") as tmp:  # read_model takes ONNX from a file
            path = Path(tmp, "graph.onnx")
            path.write_bytes(model.SerializeToString())
            graph = core.read_model(str(path))
        known = {name for op in graph.get_ordered_ops() for port in op.outputs() for name in port.get_names()}
        wanted = [name for name in names if name in known]
        if wanted:
            graph.add_outputs(wanted)
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": PRECISION_HINTS["int8"]})
        request = compiled.create_infer_request()
        index = {name: i for i, port in enumerate(compiled.outputs) for name in port.get_names()}

        def run(batch: np.ndarray) -> dict[str, np.ndarray]:
            request.infer({0: batch})
            return {name: request.get_output_tensor(index[name]).data.copy() for name in wanted if name in index}

        return run

    def describe_engine(self, engine: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        import collections
        import math

        try:
            model = import_openvino().Core().read_model(str(engine))
        except (FcnDeployError, RuntimeError):  # the stats are optional; opening the engine reports the real problem
            return {}
        ops = collections.Counter(op.get_type_name() for op in model.get_ordered_ops())
        params = sum(
            math.prod(op.get_output_shape(0)) for op in model.get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_output_element_type(0).is_real()
        )  # fmt: skip
        return {"nodes": sum(ops.values()), "op_types": dict(ops.most_common()), "parameters": params}
