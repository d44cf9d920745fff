"""build-engine: precision transform, backend compile, and the manifest; plus ``load_runner``.

``build_engine`` turns an exported ONNX into a deployable engine:

1. the precision transform (:mod:`fcn_deploy.precision`) writes ``<stem>.<precision>.onnx``;
2. the backend compiles it: TensorRT to a serialised plan, or ONNX Runtime to its offline-optimised
   ONNX (``ORT_ENABLE_EXTENDED``: portable across CPUs, unlike the layout-specific ``ALL``);
3. a JSON manifest is written next to the engine (``<engine>.json``) recording the backend and
   library versions, the GPU, the precision, the profile, the hashes of the engine, the source
   ONNX and the calibration set, the class metadata, the build time and the command that rebuilds it.

``load_runner(path)`` opens any artefact (``.pt`` checkpoint, ``.onnx``, engine + manifest) as a
runner; for engines it checks the manifest (engine hash, library versions, GPU) first and, on a
mismatch, stops with the exact rebuild command.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from . import __version__
from .errors import FcnDeployError, require_file
from .fileio import atomic_path, atomic_write_json, sha256_file
from .meta import ModelMeta, read_onnx_meta, read_onnx_props, write_onnx_meta
from .precision import apply_precision
from .runners.base import Profile, Runner
from .runners.ort_runner import OrtRunner
from .runners.torch_runner import TorchRunner
from .runners.ort_runner import choose_providers
from .runners.trt_runner import TrtRunner, build_plan, gpu_info, tensorrt_status

MANIFEST_FORMAT = "fcn-deploy-engine/1"
BACKENDS = ("auto", "tensorrt", "onnxruntime")


@dataclass
class BuildOptions:
    precision: str = "fp32"
    backend: str = "auto"
    min_shape: tuple[int, int] | None = None
    opt_shape: tuple[int, int] | None = None
    max_shape: tuple[int, int] | None = None
    batch: tuple[int, int, int] | None = None  # (min, opt, max)
    calib_dir: Path | None = None
    calib_method: str = "minmax"
    #: Activation encoding of the INT8 graph: that of the compiling backend unless set, e.g.
    #: ``tensorrt`` with the onnxruntime backend to check TensorRT's exact graph on a CPU.
    int8_target: str | None = None
    workspace_gib: float = 4.0
    timing_cache: Path | None = None


def manifest_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def default_engine_path(onnx_path: Path, precision: str, backend: str) -> Path:
    return onnx_path.with_name(f"{onnx_path.stem}.{precision}.{'plan' if backend == 'tensorrt' else 'ort.onnx'}")


def resolve_backend(requested: str, log=print) -> str:
    if requested not in BACKENDS:
        raise FcnDeployError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "onnxruntime":
        return requested
    usable, why = tensorrt_status()
    if requested == "auto":
        chosen = "tensorrt" if usable else "onnxruntime"
        log(f"backend auto -> {chosen}: {why}")
        return chosen
    if requested == "tensorrt" and not usable:
        raise FcnDeployError(f"--backend tensorrt: {why}; install the tensorrt extra on a GPU machine, or use --backend onnxruntime")
    return requested


def _input_dims(model: onnx.ModelProto) -> list[int | str]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def resolve_profile(model: onnx.ModelProto, meta: ModelMeta, opts: BuildOptions, log=print) -> Profile:
    """min/opt/max from the flags, else from the ONNX metadata (min = the architecture's minimum).

    An ONNX whose input has fixed sizes gives a static engine, and says so.
    """
    dims = _input_dims(model)
    static_hw = isinstance(dims[2], int) and isinstance(dims[3], int) and dims[2] > 0
    static_n = isinstance(dims[0], int) and dims[0] > 0
    if static_hw:
        fixed = (int(dims[2]), int(dims[3]))
        log(f"[yellow]the ONNX input has no dynamic height/width: building a static engine for {fixed[0]}x{fixed[1]}[/]")
        hw_min = hw_opt = hw_max = fixed
    else:
        hw_min = opts.min_shape or (meta.min_size, meta.min_size)
        hw_opt = opts.opt_shape or (meta.train_size, meta.train_size)
        hw_max = opts.max_shape or (meta.max_size, meta.max_size)
    if static_n:
        n_min = n_opt = n_max = int(dims[0])
    else:
        n_min, n_opt, n_max = opts.batch or (1, 1, 8)
    lo, opt, hi = (n_min, *hw_min), (n_opt, *hw_opt), (n_max, *hw_max)
    for axis, label in enumerate(("batch", "height", "width")):
        if not lo[axis] <= opt[axis] <= hi[axis]:
            raise FcnDeployError(
                f"profile {label}: need min <= opt <= max, got {lo[axis]} / {opt[axis]} / {hi[axis]}; fix --min-shape/--opt-shape/--max-shape/--batch"
            )
    if not static_hw and min(hw_min) < meta.min_size:
        raise FcnDeployError(
            f"--min-shape {hw_min[0]}x{hw_min[1]} is below {meta.arch}'s minimum input {meta.min_size}x{meta.min_size}"
        )
    return Profile(lo, opt, hi)  # type: ignore[arg-type]


def library_versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import torch

    versions = {
        "fcn_deploy": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    try:
        import tensorrt  # type: ignore[import-not-found]

        versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        versions["cuda"] = str(torch.version.cuda)
    return versions


def _ort_compile(src: Path, out: Path, meta: ModelMeta, precision: str, providers: list[str]) -> None:
    """ORT's offline-optimised graph (extended level) for ``providers``, with the metadata put back.

    Offline-optimised graphs must run with the providers they were optimised for (fused CPU
    kernels would not run on CUDA), so the manifest records them and loading uses them.
    """
    import onnxruntime as ort

    with atomic_path(out) as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp)
        options.log_severity_level = 3
        ort.InferenceSession(str(src), options, providers=providers)
        optimized = onnx.load(str(tmp))
        write_onnx_meta(optimized, meta, {"fcn_deploy.precision": precision, "fcn_deploy.backend": "onnxruntime"})
        onnx.save(optimized, str(tmp), save_as_external_data=False)


def build_engine(
    onnx_path: str | Path, out: str | Path | None = None, opts: BuildOptions | None = None, log=print
) -> dict[str, Any]:
    """Build one engine and its manifest; returns the manifest."""
    opts = opts or BuildOptions()
    src = require_file(onnx_path, "ONNX model", "export one with `fcn-deploy export`")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise FcnDeployError(f"{src}: not a readable ONNX model ({exc.__class__.__name__}); re-export it") from exc
    meta = read_onnx_meta(model, str(src))
    props = read_onnx_props(model)
    if props.get("fcn_deploy.precision", "fp32") != "fp32" or "fcn_deploy.backend" in props:
        raise FcnDeployError(
            f"{src}: is already a built {props.get('fcn_deploy.precision', '')} engine; build from the FP32 export"
        )
    backend = resolve_backend(opts.backend, log)
    int8_target = opts.int8_target or backend
    if opts.precision == "int8" and backend == "tensorrt" and int8_target != "tensorrt":
        raise FcnDeployError(
            f"--int8-target {int8_target} with --backend tensorrt: TensorRT needs symmetric int8 Q/DQ; drop --int8-target"
        )
    profile = resolve_profile(model, meta, opts, log)
    out = Path(out) if out else default_engine_path(src, opts.precision, backend)
    suffix = f"{opts.precision}-{int8_target}" if opts.precision == "int8" else opts.precision
    precision_onnx = src if opts.precision == "fp32" else src.with_name(f"{src.stem}.{suffix}.onnx")
    if opts.precision != "fp32":
        log(f"{opts.precision}: transforming {src.name} -> {precision_onnx.name}")
        transform = apply_precision(
            src, precision_onnx, opts.precision, opts.calib_dir, opts.calib_method, max_hw=profile.max[1:],
            int8_target=int8_target, log=log,
        )
    else:
        transform = {"precision": "fp32"}
    build_info: dict[str, Any] = {}
    if backend == "tensorrt":
        timing_cache = opts.timing_cache or out.parent / "timing.cache"  # reused by every later build there
        build_info = build_plan(precision_onnx, out, profile, opts.workspace_gib, timing_cache, log=log)
    else:
        build_info["providers"] = choose_providers("auto")
        _ort_compile(precision_onnx, out, meta, opts.precision, build_info["providers"])
    device = gpu_info() if backend == "tensorrt" else {"cpu": platform.processor() or platform.machine()}
    calibration = transform.get("calibration") or {}
    manifest = {
        "format": MANIFEST_FORMAT,
        "engine": out.name,
        "engine_sha256": sha256_file(out),
        "backend": backend,
        "precision": opts.precision,
        "versions": library_versions(),
        "device": device,
        "profile": profile.to_dict(),
        "source_onnx": str(src.resolve()),
        "source_onnx_sha256": sha256_file(src),
        "precision_onnx": str(precision_onnx.resolve()),
        "precision_onnx_sha256": sha256_file(precision_onnx),
        "calibration_sha256": calibration.get("sha256"),
        "transform": transform,
        "build": build_info,
        "meta": meta.to_dict(),
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "built_by": f"fcn-deploy {__version__}",
        "rebuild_command": rebuild_command(src, out, opts, backend),
    }
    atomic_write_json(manifest_path(out), manifest)
    return manifest


def rebuild_command(src: Path, out: Path, opts: BuildOptions, backend: str) -> str:
    """The command that builds this engine again (absolute paths: it is printed from anywhere)."""
    parts = ["fcn-deploy", "build-engine", str(src.resolve()), "-o", str(out.resolve()), "--backend", backend]
    if opts.precision != "fp32":
        parts.append(f"--{opts.precision}")
    if opts.precision == "int8":
        parts += ["--calib-method", opts.calib_method]
        if opts.int8_target:
            parts += ["--int8-target", opts.int8_target]
    if opts.precision != "fp32" and opts.calib_dir:
        parts += ["--calib", str(Path(opts.calib_dir).resolve())]
    for flag, shape in (("--min-shape", opts.min_shape), ("--opt-shape", opts.opt_shape), ("--max-shape", opts.max_shape)):
        if shape:
            parts += [flag, f"{shape[0]}x{shape[1]}"]
    if opts.batch:
        parts += ["--batch", ",".join(map(str, opts.batch))]
    return shlex.join(parts)


def read_manifest(engine: str | Path) -> dict[str, Any]:
    path = manifest_path(engine)
    if not path.is_file():
        raise FcnDeployError(f"{engine}: its manifest {path.name} is missing; rebuild with `fcn-deploy build-engine`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FcnDeployError(f"{path}: manifest is not valid JSON ({exc}); rebuild the engine") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise FcnDeployError(f"{path}: not an fcn-deploy engine manifest")
    return manifest


def check_manifest(engine: str | Path, manifest: dict[str, Any]) -> None:
    """Stop, with the rebuild command, when the engine file or the environment does not match."""
    rebuild = manifest.get("rebuild_command", "fcn-deploy build-engine ...")
    problems = []
    if sha256_file(engine) != manifest.get("engine_sha256"):
        problems.append("the engine file's sha256 differs from its manifest (modified or replaced)")
    built = manifest.get("versions", {})
    now = library_versions()
    if manifest.get("backend") == "tensorrt":
        if built.get("tensorrt") != now.get("tensorrt"):
            problems.append(f"built with TensorRT {built.get('tensorrt')}, this machine has {now.get('tensorrt', 'none')}")
        gpu = gpu_info()
        want = manifest.get("device", {}).get("compute_capability")
        if want and gpu.get("compute_capability") != want:
            problems.append(f"built for compute capability {want}, this GPU is {gpu.get('compute_capability', 'absent')}")
    else:
        major_minor = lambda v: ".".join(str(v).split(".")[:2])  # noqa: E731
        if major_minor(built.get("onnxruntime")) != major_minor(now.get("onnxruntime")):
            problems.append(f"built with ONNX Runtime {built.get('onnxruntime')}, this machine has {now.get('onnxruntime')}")
    if problems:
        raise FcnDeployError(f"{engine}: {'; '.join(problems)}. Rebuild it: {rebuild}")


def load_runner(path: str | Path, providers: str = "auto", device: str = "cpu", threads: int | None = None) -> Runner:
    """Open a checkpoint (.pt), an ONNX file, or an engine with its manifest as a runner."""
    path = require_file(path, "model or engine")
    if path.suffix == ".pt":
        return TorchRunner(path, device=device)
    has_manifest = manifest_path(path).is_file()
    if path.suffix in (".plan", ".engine", ".trt"):
        manifest = read_manifest(path)
        check_manifest(path, manifest)
        meta = ModelMeta.from_dict(manifest["meta"], str(path))
        return TrtRunner(path, meta, manifest["precision"], Profile.from_dict(manifest["profile"]))
    if path.suffix == ".onnx":
        if has_manifest:
            manifest = read_manifest(path)
            check_manifest(path, manifest)
            built_for = manifest.get("build", {}).get("providers")
            return OrtRunner(
                path, providers=built_for or providers, threads=threads, profile=Profile.from_dict(manifest["profile"]),
                precision=manifest["precision"],
            )  # fmt: skip
        return OrtRunner(path, providers=providers, threads=threads)
    raise FcnDeployError(f"{path}: unknown artefact type {path.suffix!r}; expected .pt, .onnx or .plan (with its manifest)")


__all__ = [
    "BuildOptions", "build_engine", "load_runner", "read_manifest", "check_manifest", "manifest_path",
    "resolve_backend", "resolve_profile", "default_engine_path", "library_versions", "read_onnx_meta",
]  # fmt: skip
