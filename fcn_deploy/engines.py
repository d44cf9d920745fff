"""build-engine: the precision transform, the backend's compile, and the manifest.

``build_engine`` turns an exported (or adopted) FP32 ONNX into a deployable engine:

1. the precision's transform (its entry in :mod:`fcn_deploy.precisions`) writes the precision graph
   (``<stem>.fp16.onnx``; ``<stem>.int8-<target>.onnx`` for INT8, whose activation encoding is the
   target backend's);
2. the backend (from :mod:`fcn_deploy.backends`' registry) compiles that graph under one profile;
3. a JSON manifest next to the engine (``<engine>.json``) lists every engine file with its sha256
   and records the backend, its options, library versions and device, the precision, the profile,
   the hashes of the source ONNX and the calibration set, the class metadata, the build time and the
   command that rebuilds it.

An unsupported backend and precision pair, or an option the precision does not use, is refused
before any work.  Opening engines is :func:`fcn_deploy.backends.open_engine`'s job.
"""

from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from . import __version__, backends, precisions
from .backends import CompileOptions, Profile, default_profile
from .backends.manifest import MANIFEST_FORMAT, common_versions, file_entries, manifest_path, write_manifest
from .errors import FcnDeployError, library_errors, require_file
from .events import SILENT, Listener
from .fileio import ensure_writable_dir, replaced_together, sha256_file
from .meta import ModelMeta, read_onnx_meta, read_onnx_props
from .onnxkit import dims_of, read_onnx
from .precision import apply_precision
from .precision.repair import REPAIR_MODES


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
    #: Build the INT8 graph with this backend's activation encoding instead of the compiling
    #: backend's, e.g. ``tensorrt`` with ``backend="onnxruntime"`` to check TensorRT's exact graph on a CPU.
    int8_target: str | None = None
    #: INT8 nodes kept in float (by name), chosen by hand.
    float_nodes: tuple[str, ...] = ()
    #: INT8: fold each quantized conv's mean output error into its bias (the repair's first, free step).
    bias_correction: bool = False
    #: INT8: ``auto`` checks the compiled engine and repairs it when it fails; ``off`` checks and records only.
    int8_repair: str | None = None
    #: INT8 repair: the most nodes kept in float, and the seconds the search may take.
    repair_budget: int | None = None
    repair_time_s: float | None = None
    #: The compiling backend's own options (its ``Backend.options``), by name.
    backend_options: dict[str, Any] = field(default_factory=dict)

    def given(self) -> set[str]:
        """The precision-specific options set away from their defaults (each precision says which it uses).
        The calibration folder is shared by every command that builds engines, so it is never refused."""
        defaults = BuildOptions()
        names = ("calib_method", "int8_target", "float_nodes", "bias_correction", "int8_repair", "repair_budget", "repair_time_s")
        return {name for name in names if getattr(self, name) != getattr(defaults, name)}


def resolve_profile(model: onnx.ModelProto, meta: ModelMeta, opts: BuildOptions, listener: Listener = SILENT) -> Profile:
    """min/opt/max from the options, else the default profile (from the ONNX metadata: min = the
    architecture's minimum).  An ONNX whose input has fixed sizes gives a static engine, and says so."""
    dims = dims_of(model.graph.input[0])
    base = default_profile(meta, dims)
    fixed = [isinstance(d, int) and d > 0 for d in dims]
    static_hw = fixed[2] and fixed[3]
    if static_hw:
        listener.note(f"the ONNX input has no dynamic height/width: building a static engine for {dims[2]}x{dims[3]}", level="warning")
        hw_min, hw_opt, hw_max = base.min[1:], base.opt[1:], base.max[1:]
    else:
        hw_min, hw_opt, hw_max = opts.min_shape or base.min[1:], opts.opt_shape or base.opt[1:], opts.max_shape or base.max[1:]
    n_min, n_opt, n_max = (base.min[0], base.opt[0], base.max[0]) if fixed[0] or not opts.batch else opts.batch
    lo, opt, hi = (n_min, *hw_min), (n_opt, *hw_opt), (n_max, *hw_max)
    for axis, label in enumerate(("batch", "height", "width")):
        if not lo[axis] <= opt[axis] <= hi[axis]:
            raise FcnDeployError(f"profile {label}: need min <= opt <= max, got {lo[axis]} / {opt[axis]} / {hi[axis]}",
                                 options=("batch",) if axis == 0 else ("min_shape", "opt_shape", "max_shape"))  # fmt: skip
    if not static_hw and min(hw_min) < meta.min_size:
        raise FcnDeployError(f"min shape {hw_min[0]}x{hw_min[1]} is below {meta.arch}'s minimum input {meta.min_size}x{meta.min_size}",
                             options=("min_shape",))  # fmt: skip
    return Profile(lo, opt, hi)  # type: ignore[arg-type]


def library_versions(backend: backends.Backend | None = None) -> dict[str, str]:
    """What a manifest records: the common libraries plus the backend's own."""
    return {**common_versions(), **(backend.versions() if backend else {})}


def precision_graph_path(src: Path, precision: str, int8_target: str) -> Path:
    """Where the precision transform of ``src`` goes (the FP32 graph is ``src`` itself)."""
    return precisions.get(precision).graph_path(src, int8_target)


def check_options(opts: BuildOptions, backend: backends.Backend) -> precisions.Precision:
    """Everything about the options that can be refused before any work."""
    entry = precisions.get(opts.precision)
    backend.require_precision(entry.name)
    unused = sorted(opts.given() - entry.uses)
    if unused:
        users = [name for name in precisions.names() if set(unused) <= precisions.get(name).uses]
        raise FcnDeployError(f"{', '.join(unused)}: used by {' and '.join(users) or 'no'} builds only, not {entry.name}",
                             options=tuple(unused))  # fmt: skip
    backend.option_values(opts.backend_options)
    if opts.int8_repair is not None and opts.int8_repair not in REPAIR_MODES:
        raise FcnDeployError(f"INT8 repair {opts.int8_repair!r}: choose {', '.join(REPAIR_MODES)}", options=("int8_repair",))
    if opts.repair_budget is not None and opts.repair_budget < 1:
        raise FcnDeployError(f"repair budget {opts.repair_budget}: must be at least 1 node", options=("repair_budget",))
    return entry


def build_engine(
    onnx_path: str | Path, out: str | Path | None = None, opts: BuildOptions | None = None, *, listener: Listener = SILENT
) -> dict[str, Any]:
    """Build one engine and its manifest; returns the manifest."""
    opts = opts or BuildOptions()
    precisions.get(opts.precision)
    src = require_file(onnx_path, "ONNX model", "export one with `fcn-deploy export`, or adopt one with `fcn-deploy adopt`")
    model = read_onnx(src, load_data=False)
    meta = read_onnx_meta(model, str(src))
    props = read_onnx_props(model)
    if props.get("fcn_deploy.precision", "fp32") != "fp32" or "fcn_deploy.backend" in props:
        raise FcnDeployError(f"{src}: is already a built {props.get('fcn_deploy.precision', '')} engine; build from the FP32 export")
    backend = backends.resolve(opts.backend, listener)
    entry = check_options(opts, backend)
    int8_target = opts.int8_target or backend.name
    encoding = backends.get(int8_target).int8_encoding
    if entry.quantized and encoding not in backend.accepted_int8_encodings:
        raise FcnDeployError(
            f"INT8 target {int8_target} with backend {backend.name}: {backend.name} compiles only "
            f"{', '.join(backend.accepted_int8_encodings)} Q/DQ graphs; drop the INT8 target", options=("int8_target",),
        )  # fmt: skip
    profile = resolve_profile(model, meta, opts, listener)
    out = Path(out) if out else backend.default_engine_path(src, opts.precision)
    files = backend.engine_files(out)
    precision_onnx = entry.graph_path(src, int8_target)
    taken = {f.resolve() for f in files} & {src.resolve(), precision_onnx.resolve()}
    if taken:
        raise FcnDeployError(f"{out}: would overwrite {taken.pop().name}, an input of this build; choose another engine path",
                             options=("out",))  # fmt: skip
    ensure_writable_dir(out.parent)
    # The engine files and the manifest are one artefact: an interruption after any of them was
    # replaced removes the whole set (never a new engine under an old manifest); before, the old set stays.
    with replaced_together([*files, manifest_path(out)]):
        backend_options = backend.option_values(opts.backend_options)
        int8_check = None
        if entry.quantized:
            transform, build_info, int8_check = _checked_int8(src, out, precision_onnx, backend, profile, meta, opts, encoding,
                                                              backend_options, listener)  # fmt: skip
            transform["int8"]["target"] = int8_target  # type: ignore[index]
        else:
            if entry.transform is not None:
                listener.note(f"{opts.precision}: transforming {src.name} -> {precision_onnx.name}")
                transform = apply_precision(src, precision_onnx, opts.precision, calib_dir=opts.calib_dir, calib_method=opts.calib_method,
                                            max_hw=profile.max[1:], listener=listener)  # fmt: skip
            else:
                transform = {"precision": opts.precision}
            listener.note(f"{backend.name}: compiling {precision_onnx.name} -> {out.name}")
            build_info = backend.compile(
                precision_onnx, out, profile, meta, CompileOptions(opts.precision, backend_options), listener=listener
            )
        calibration = transform.get("calibration") or {}
        manifest = {
            "format": MANIFEST_FORMAT,
            "engine": out.name,
            "files": file_entries(files),
            "engine_sha256": sha256_file(out),
            "backend": backend.name,
            "precision": opts.precision,
            "versions": library_versions(backend),
            "device": backend.device_info(),
            "profile": profile.to_dict(),
            "source_onnx": str(src.resolve()),
            "source_onnx_sha256": sha256_file(src),
            "precision_onnx": str(precision_onnx.resolve()),
            "precision_onnx_sha256": sha256_file(precision_onnx),
            "calibration_sha256": calibration.get("sha256"),
            "transform": transform,
            "backend_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in backend_options.items()},
            "build": build_info,
            "int8_check": int8_check,
            "meta": meta.to_dict(),
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "built_by": f"fcn-deploy {__version__}",
            "rebuild_command": rebuild_command(src, out, _as_built(opts, int8_check), backend),
        }
        write_manifest(out, manifest)
    return manifest


def _checked_int8(src, out, precision_onnx, backend, profile, meta, opts: BuildOptions, encoding: str, backend_options, listener):
    """Quantize, compile, check and (when it fails) repair; the accepted graph and engine end under their names."""
    from .int8_check import CheckedInt8Build, move_into_place
    from .precision import load_calibration_for
    from .precision.int8 import check_method, int8_details, require_images
    from .precision.repair import DEFAULT_BUDGET, DEFAULT_TIME_LIMIT_S, RepairOptions

    check_method(opts.calib_method, encoding)
    model = onnx.load(str(src))
    calibration = load_calibration_for(meta, opts.calib_dir, profile.max[1:], listener)
    require_images(calibration, opts.calib_method)
    repair = RepairOptions(opts.int8_repair or "auto", opts.repair_budget or DEFAULT_BUDGET, opts.repair_time_s or DEFAULT_TIME_LIMIT_S)
    listener.note(f"int8: quantizing {src.name} for {backend.name} ({encoding} activations) and compiling -> {out.name}")
    props = {"fcn_deploy.precision": "int8", "fcn_deploy.int8_encoding": encoding}
    check = CheckedInt8Build(source=src, model=model, meta=meta, backend=backend, profile=profile, engine=out, calibration=calibration,
                             calib_method=opts.calib_method, encoding=encoding, props=props, backend_options=backend_options,
                             repair=repair, listener=listener)  # fmt: skip
    try:
        with library_errors(src, "the int8 transform", "build FP32 instead, or simplify the graph (onnxslim) and try again"):
            candidate, record = check.run(tuple(opts.float_nodes), opts.bias_correction)
        move_into_place(candidate, backend, out, precision_onnx)
        quantization = check.quantizer.report()
    finally:
        check.close()
    transform = {
        "precision": "int8",
        "calibration": {"folder": str(calibration.folder), "images": len(calibration.files), "skipped": len(calibration.skipped),
                        "sha256": calibration.sha256, **quantization},
        "int8": int8_details(encoding, record["float_nodes"], record["bias_correction"]),
    }  # fmt: skip
    return transform, candidate.build_info, record


def _as_built(opts: BuildOptions, int8_check: dict | None) -> BuildOptions:
    """The options that rebuild exactly this engine: a repair's float nodes, given by name, its bias
    correction, and no new search."""
    if not int8_check or (tuple(int8_check["float_nodes"]), int8_check["bias_correction"]) == (
        tuple(opts.float_nodes),
        opts.bias_correction,
    ):
        return opts
    return replace(opts, float_nodes=tuple(int8_check["float_nodes"]), bias_correction=int8_check["bias_correction"], int8_repair="off")


def rebuild_command(src: Path, out: Path, opts: BuildOptions, backend: backends.Backend) -> str:
    """The command that builds this engine again (absolute paths: it is printed from anywhere)."""
    entry = precisions.get(opts.precision)
    parts = ["fcn-deploy", "build-engine", str(src.resolve()), "-o", str(out.resolve()), "--backend", backend.name]
    if opts.precision != "fp32":
        parts += ["--precision", opts.precision]
    if "calib_method" in entry.uses:
        parts += ["--calib-method", opts.calib_method]
    if "int8_target" in entry.uses and opts.int8_target:
        parts += ["--int8-target", opts.int8_target]
    if "float_nodes" in entry.uses and opts.float_nodes:
        parts += ["--float-nodes", ",".join(opts.float_nodes)]
    if "bias_correction" in entry.uses and opts.bias_correction:
        parts += ["--bias-correction"]
    if "int8_repair" in entry.uses and opts.int8_repair:
        parts += ["--int8-repair", opts.int8_repair]
    if "repair_budget" in entry.uses and opts.repair_budget:
        parts += ["--repair-budget", str(opts.repair_budget)]
    if entry.needs_calibration and opts.calib_dir:
        parts += ["--calib", str(Path(opts.calib_dir).resolve())]
    for flag, shape in (("--min-shape", opts.min_shape), ("--opt-shape", opts.opt_shape), ("--max-shape", opts.max_shape)):
        if shape:
            parts += [flag, f"{shape[0]}x{shape[1]}"]
    if opts.batch:
        parts += ["--batch", ",".join(map(str, opts.batch))]
    for option in backend.options:
        value = opts.backend_options.get(option.name)
        if value is not None and value != option.default:
            parts += [option.flag, str(value)]
    return shlex.join(parts)


__all__ = ["BuildOptions", "build_engine", "check_options", "library_versions", "precision_graph_path", "rebuild_command",
           "resolve_profile"]  # fmt: skip
