"""What every backend offers: a :class:`Backend` that compiles and opens engines, and a
:class:`Runner` that segments batches (after Polygraphy's loaders and runners).

The runner is a template: :meth:`Runner.infer` does everything that must be the same for every
backend (the profile check, the input dtype, the logits/mask contract, the timing of the call) and
a backend implements only :meth:`Runner.infer_impl`, the raw run.  Validation, benchmarking, video
inference and serving only use this interface.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..meta import ModelMeta
from .profile import Profile


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64, int32, ...
    shape: tuple[int | str, ...]  # ints for fixed dims, names for dynamic ones


@dataclass
class Prediction:
    """What a runner returns: the argmax mask always, the logits when asked for and available."""

    mask: np.ndarray  # int64 N x H x W, or the ``mask_dtype`` the caller asked for
    logits: np.ndarray | None = None  # float32 N x C x H x W


def mask_from_logits(logits: np.ndarray) -> np.ndarray:
    """Argmax over the class axis of ``N x C x H x W`` logits (first maximum wins, as ``argmax``).

    A running maximum over the C class planes: contiguous passes instead of ``np.argmax``'s strided
    reduction over axis 1, twice as fast at 512x512 (4 vs 7.5 ms), and torch's CPU ``argmax(1)``
    takes 38 ms there.
    """
    best = logits[:, 0].copy()
    mask = np.zeros(best.shape, dtype=np.int64)
    for label in range(1, logits.shape[1]):
        better = logits[:, label] > best
        mask[better] = label
        np.maximum(best, logits[:, label], out=best)
    return mask


def upsample_bilinear(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """``N x C x h x w`` logits resized to ``height x width`` as PyTorch's bilinear ``align_corners=False``
    does (ONNX Resize ``half_pixel``): how the ONNX reference of an adopted low-resolution model is brought
    to the input size, independently of the Resize that adopt added to the engine's graph."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    return torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False).numpy()


@dataclass(frozen=True)
class Capabilities:
    """What a backend's runners can do besides ``infer``."""

    #: ``Runner.infer_on_device`` runs on inputs already on the device (the benchmark times that on a GPU).
    device_infer: bool = False
    #: ``Runner.infer_images`` takes uint8 RGB images and normalises them inside the graph, on the
    #: engine's threads, rather than in numpy before the call (the :class:`Segmenter` uses it).
    uint8_images: bool = False


class Runner(abc.ABC):
    """A loaded model that segments preprocessed batches.

    Subclasses set ``path``, ``meta``, ``profile`` and ``precision`` (via ``__init__``), describe
    their I/O in ``inputs``/``outputs`` and implement ``infer_impl``; everything else is here.
    """

    #: Registry name of the backend ("onnxruntime", "openvino", "tensorrt", "torch", ...); the registry
    #: sets it on each runner it opens, so a plugin's runner reports the plugin's name.
    backend: str = "?"
    #: Where the computation runs: "cpu" or "cuda".  The benchmark times runners whose
    #: ``capabilities.device_infer`` is set on device-resident inputs (:meth:`infer_on_device`).
    device: str = "cpu"
    capabilities: Capabilities = Capabilities()
    #: The dtype the raw run takes; :meth:`infer` casts the float32 batch to it.
    input_dtype: Any = np.float32

    def __init__(self, path: str | Path, meta: ModelMeta, profile: Profile, precision: str = "fp32"):
        self.path = str(path)
        self.meta = meta
        self.profile = profile
        self.precision = precision
        #: Wall time of the last raw run, in milliseconds (what the engine itself took).
        self.last_infer_ms: float | None = None

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def infer_impl(self, batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        """The raw run: ``batch`` is ``Nx3xHxW`` in ``input_dtype``, inside the profile.

        Return ``{"logits": N x C x H x W or None, "mask": N x H x W or None}``; at least one must
        be given.  A runner that can compute the argmax where the logits live (a GPU) returns the
        mask and, when ``need_logits`` is false, no logits.
        """

    def infer(self, batch: np.ndarray, need_logits: bool = True, mask_dtype: Any = np.int64) -> Prediction:
        """Segment ``batch`` (float32 ``Nx3xHxW``, preprocessed per ``meta``).

        With ``need_logits=False`` the logits may be left out of the result (video inference only
        wants the mask).  ``mask_dtype``: the mask's integer type; a caller that keeps uint8 masks
        (the :class:`~fcn_deploy.inference.Segmenter`) takes the engine's uint8 mask as it is
        instead of through int64 and back.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise FcnDeployError(f"{self.path}: expected an Nx3xHxW batch, got shape {tuple(batch.shape)}")
        n, _, h, w = batch.shape
        self.profile.check(n, h, w)
        return self._timed(self.infer_impl, np.ascontiguousarray(batch, dtype=self.input_dtype), (n, h, w), need_logits, mask_dtype)

    def _timed(self, impl, batch: np.ndarray, nhw: tuple[int, int, int], need_logits: bool, mask_dtype: Any) -> Prediction:
        """Run ``impl`` (a raw run), keep its wall time in :attr:`last_infer_ms`, check its result."""
        start = time.perf_counter()
        raw = impl(batch, need_logits)
        self.last_infer_ms = (time.perf_counter() - start) * 1000.0
        return self._prediction(raw, nhw, need_logits, mask_dtype)

    def _prediction(self, raw: dict[str, np.ndarray | None], nhw: tuple[int, int, int], need_logits: bool, mask_dtype: Any) -> Prediction:
        logits, mask = raw.get("logits"), raw.get("mask")
        n, h, w = nhw
        expected = (n, self.meta.num_classes, h, w)
        if logits is not None:
            logits = np.asarray(logits)
            if logits.shape != expected:
                raise FcnDeployError(
                    f"{self.path}: the engine returned logits of shape {logits.shape} for a {n}x3x{h}x{w} input, "
                    f"expected {expected}; is it a segmentation model with {self.meta.num_classes} classes?"
                )
            logits = logits.astype(np.float32, copy=False)
        if mask is None:
            if logits is None:
                raise FcnDeployError(f"{self.path}: the engine returned neither logits nor a mask")
            mask = mask_from_logits(logits)
        mask = np.asarray(mask)
        if mask.shape != (n, h, w):
            raise FcnDeployError(f"{self.path}: the engine returned a mask of shape {mask.shape}, expected {(n, h, w)}")
        return Prediction(mask=mask.astype(mask_dtype, copy=False), logits=logits if need_logits else None)

    def infer_images(self, images: np.ndarray, need_logits: bool = True, mask_dtype: Any = np.int64) -> Prediction:
        """Segment ``images`` (``uint8 NxHxWx3`` RGB, not yet normalised): the graph scales and
        normalises them per ``meta``, with the same float32 operations as
        :func:`fcn_deploy.data.images.preprocess`.  Only runners whose ``capabilities.uint8_images``
        is set implement it (:meth:`infer_images_impl`)."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise FcnDeployError(f"{self.path}: expected uint8 NxHxWx3 images, got {images.dtype} {tuple(images.shape)}")
        n, h, w, _ = images.shape
        self.profile.check(n, h, w)
        return self._timed(self.infer_images_impl, np.ascontiguousarray(images), (n, h, w), need_logits, mask_dtype)

    def infer_images_impl(self, images: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        """The raw run of :meth:`infer_images`, with :meth:`infer_impl`'s result."""
        raise NotImplementedError(f"{type(self).__name__} takes normalised batches only (capabilities.uint8_images is off)")

    def infer_on_device(self, batch: Any) -> Any:
        """Run on a batch already on the device, returning device-side outputs (no host copies).
        Only runners whose ``capabilities.device_infer`` is set implement it."""
        raise NotImplementedError(f"{type(self).__name__} runs on host arrays only (capabilities.device_infer is off)")

    def share_cores(self) -> None:  # noqa: B027 - optional hook
        """Run from now on as one of several busy processes on the same cores (a served engine
        shares them with Triton, its clients and the other instances): a runner that pins its
        threads to cores stops, since processes pinned alike queue on the same core."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"

    @property
    def arithmetic(self) -> str:
        """The arithmetic the engine actually computes in, which may differ from its graph's precision:
        ``fp16-emulated`` where an FP16 graph is computed in FP32 (ONNX Runtime on a CPU), ``bf16``
        where a backend maps FP16 to bf16 (OpenVINO on CPUs without FP16 units).  Validation reports it."""
        return self.precision

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class BackendOption:
    """A build option a backend owns (TensorRT's workspace, its timing cache, ...).  The CLI shows it
    among that backend's options as ``flag``, and the manifest's rebuild command repeats it."""

    name: str  # the key in CompileOptions.backend_options (a Python identifier)
    flag: str  # the command line flag, e.g. "--workspace"
    type: type = str
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class TritonSpec:
    """How Triton serves this backend's engines natively (``export-triton``)."""

    #: The config key and value that pick Triton's backend: ``("platform", "tensorrt_plan")``, ``("backend", "openvino")``.
    key: str
    value: str
    #: The engine's files (``Backend.engine_files`` order) as named in the model's version folder.
    model_files: tuple[str, ...]
    #: Whether Triton's backend batches (Triton's OpenVINO backend pads to max_batch_size, so it does not).
    batching: bool = True
    #: ``gpu`` or ``cpu``: the instance group kind.
    device: str = "cpu"
    #: Backend parameters of the engine model's config.
    parameters: dict[str, str] | None = None
    #: Which Triton release runs the engine (README text).
    release: str = ""
    #: What a user should know before serving it there (printed by export-triton).
    notes: tuple[str, ...] = ()


@dataclass
class CompileOptions:
    """What a backend's compile step may use besides the graph and the profile."""

    precision: str = "fp32"
    #: The backend's own options (its ``Backend.options``), by name.
    backend_options: dict[str, Any] = field(default_factory=dict)


class Backend(abc.ABC):
    """One inference backend: a subclass, registered in :data:`fcn_deploy.backends.BUILTIN` or by
    another package through the ``fcn_deploy.backends`` entry-point group.

    It declares its facts (name, device, the precisions it compiles, its build options, its Triton
    serving spec, its capabilities), whether it is usable here, how it compiles a
    precision-transformed ONNX under a profile, how it opens an engine as a :class:`Runner`, and
    what it records in (and checks against) the engine manifest.
    """

    #: Registry name: the ``--backend`` choice and the manifest's ``backend``.
    name: ClassVar[str]
    #: Where its engines run: "cpu" or "cuda".
    device: ClassVar[str] = "cpu"
    #: How ``auto`` ranks usable backends (lower first) and why, in words.
    auto_rank: ClassVar[int] = 100
    auto_reason: ClassVar[str] = ""
    #: The precisions it compiles (names in :mod:`fcn_deploy.precisions`).
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    #: Activation encoding of the INT8 Q/DQ graph it compiles (a key of
    #: :data:`fcn_deploy.precision.int8.INT8_ENCODINGS`).
    int8_encoding: ClassVar[str] = "int8-symmetric"
    #: The INT8 encodings it can compile (``--int8-target`` may pick another backend's).
    accepted_int8_encodings: ClassVar[tuple[str, ...]] = ("int8-symmetric", "uint8-asymmetric", "uint8-asymmetric-hardswish")
    #: Suffix of the default engine name, after ``<stem>.<precision>``.
    engine_suffix: ClassVar[str]
    #: What to install when the backend is missing (printed in errors).
    install_hint: ClassVar[str] = ""
    #: Its own build options.
    options: ClassVar[tuple[BackendOption, ...]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()

    @abc.abstractmethod
    def status(self) -> tuple[bool, str]:
        """Whether the backend can build and run engines here, and why (not)."""

    def require_usable(self, what: str = "") -> None:
        usable, why = self.status()
        if not usable:
            hint = f"; {self.install_hint}" if self.install_hint else ""
            raise FcnDeployError(f"{what + ': ' if what else ''}backend {self.name} is not usable here: {why}{hint}", options=("backend",))

    def require_precision(self, precision: str) -> None:
        """A one-line error, before any work, when this backend does not compile ``precision``."""
        if precision not in self.precisions:
            raise FcnDeployError(
                f"backend {self.name} does not compile {precision} engines (it compiles {', '.join(self.precisions)}); "
                "choose another precision or backend", options=("precision", "backend"),
            )  # fmt: skip

    def option_values(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """Its options with ``given`` applied over the defaults; an option it does not own is an error."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        known = {option.name: option for option in self.options}
        foreign = sorted(set(given) - set(known))
        if foreign:
            raise FcnDeployError(f"backend {self.name} has no option {', '.join(foreign)}"
                                 + (f" (it has {', '.join(known)})" if known else " (it has none)"), options=tuple(foreign))  # fmt: skip
        return {name: given.get(name, option.default) for name, option in known.items()}

    def engine_files(self, engine: Path) -> list[Path]:
        """Every file the engine at ``engine`` consists of (the first is ``engine`` itself)."""
        return [Path(engine)]

    def default_engine_path(self, onnx_path: Path, precision: str) -> Path:
        return onnx_path.with_name(f"{onnx_path.stem}.{precision}.{self.engine_suffix}")

    @abc.abstractmethod
    def compile(self, precision_onnx: Path, engine: Path, profile: Profile, meta: ModelMeta, options: CompileOptions,
                listener: Listener = SILENT) -> dict[str, Any]:  # fmt: skip
        """Compile ``precision_onnx`` into the engine files at ``engine`` (each written atomically);
        return what the manifest records under ``build`` (settings the runner must reuse)."""

    @abc.abstractmethod
    def open(self, engine: Path, manifest: dict[str, Any], threads: int | None = None) -> Runner:
        """Open a checked engine as a runner."""

    def engine_device(self, manifest: dict[str, Any]) -> str:
        """Where the engine a manifest describes runs ("cpu" or "cuda")."""
        return self.device

    def versions(self) -> dict[str, str]:
        """Library versions the engine depends on (recorded in, and checked against, the manifest)."""
        return {}

    def device_info(self) -> dict[str, Any]:
        """The device the engine was built for (GPU name and compute capability, CPU and ISA)."""
        return {}

    def manifest_problems(self, manifest: dict[str, Any]) -> list[str]:
        """Why an engine with this manifest cannot run here (versions, device); empty when it can."""
        return []

    def triton_spec(self, manifest: dict[str, Any]) -> TritonSpec | None:
        """How Triton serves the engine natively; None when no Triton backend runs it."""
        return None

    def engine_io(self, engine: Path, manifest: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``([(name, numpy dtype name)], [...])`` of the engine's inputs and outputs, read from its files
        (without the runtime where possible: export-triton runs where the runtime may be missing)."""
        from ..onnxkit import dtype_of, graph_inputs, read_onnx

        graph = read_onnx(engine, load_data=False)
        return [(v.name, dtype_of(v)) for v in graph_inputs(graph)], [(v.name, dtype_of(v)) for v in graph.graph.output]

    def describe(self) -> dict[str, Any]:
        """The backend's facts, for ``fcn-deploy backends`` and ``inspect``."""
        usable, why = self.status()
        return {
            "name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}", "usable": usable, "why": why,
            "device": self.device, "precisions": list(self.precisions), "int8_encoding": self.int8_encoding,
            "engine_suffix": self.engine_suffix, "auto_rank": self.auto_rank, "install_hint": self.install_hint,
            "options": [{"name": o.name, "flag": o.flag, "default": o.default, "help": o.help} for o in self.options],
            "capabilities": {"device_infer": self.capabilities.device_infer, "uint8_images": self.capabilities.uint8_images},
            "triton": self.triton_spec({}) is not None,
        }  # fmt: skip

    def intermediate_outputs(self, model: Any, names: list[str]) -> Any:
        """A function ``batch -> {name: array}`` running the graph ``model`` (an ONNX ModelProto, e.g. a Q/DQ
        graph) as this backend runs it, returning its intermediate tensors ``names``: how ``debug precision``
        and the INT8 repair see which nodes break on this backend.  The default runs ONNX Runtime."""
        from ..onnxkit.session import onnxruntime_outputs

        return onnxruntime_outputs(model, names)

    def describe_engine(self, engine: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """What ``inspect`` shows of an engine's graph: ``nodes``, ``op_types``, ``parameters`` (empty when unknown)."""
        return {}
