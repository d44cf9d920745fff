"""``inspect``: what a model file is, and whether it fits the toolkit's contract (:mod:`.contract`).

Any ONNX (run once in ONNX Runtime, since foreign exports often declare no output shapes), any
engine (through its manifest and its backend) and any checkpoint.  The verdict is ``ready``,
``adoptable`` (the graph fits, the metadata is missing) or ``does not fit``, with the problems,
notes, and the next command to run.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artefacts import Kind, kind_of
from ..errors import FcnDeployError, require_file
from ..fileio import sha256_file
from ..meta import IMAGENET_MEAN, IMAGENET_STD, ONNX_META_KEY, ModelMeta, read_onnx_props
from ..onnxkit import (
    dims_of,
    dtype_of,
    external_data_files,
    graph_inputs,
    op_histogram,
    ort_message,
    parameter_count,
    precision_problem,
    read_onnx,
    walk_nodes,
)  # fmt: skip
from .contract import INPUT_NAME, OUTPUT_NAMES, image_input, pick_output, spatial_size, stride_candidates
from .probe import Probe, first_probe_size


def inspect_model(path: str | Path, *, run: bool = True) -> dict[str, Any]:
    """What ``path`` is (an ONNX file, an engine through its manifest, or a checkpoint) and whether it
    fits the toolkit; ``run``: run an ONNX once in ONNX Runtime to see its real output shapes.

    ``report["fit"]["next"]`` is the command to run next, as ``{"command", "args", "options"}`` with
    the options named as the library names them (the CLI writes it as a command line), or None.
    """
    path = require_file(path, "model", "pass an .onnx file, an engine or a .pt checkpoint")
    kind = kind_of(path)
    if kind is Kind.ENGINE:
        return _inspect_engine(path)
    if kind is Kind.CHECKPOINT:
        return _inspect_checkpoint(path)
    return _inspect_onnx(path, run)


def next_step(command: str, *args: Any, **options: Any) -> dict[str, Any]:
    """A command to run next: ``fcn-deploy <command> <args>`` with ``options`` (library option names)."""
    given = {name: str(value) if isinstance(value, Path) else value for name, value in options.items() if value is not None}
    return {"command": command, "args": [str(a) for a in args], "options": given}


def _io_rows(values, role_of: Callable[[Any], str]) -> list[dict[str, Any]]:
    rows = []
    for value in values:
        dims = dims_of(value)
        rows.append({
            "name": value.name, "role": role_of(value), "dtype": dtype_of(value), "shape": dims,
            "dynamic": [i for i, d in enumerate(dims) if not isinstance(d, int)],
        })  # fmt: skip
    return rows


def _inspect_onnx(path: Path, run: bool) -> dict[str, Any]:
    model = read_onnx(path, load_data=False)
    external = external_data_files(model, path.parent)
    missing = [loc for loc in external if not (path.parent / loc).is_file()]
    props = read_onnx_props(model)
    meta = None
    if ONNX_META_KEY in props:
        meta = ModelMeta.from_json(props[ONNX_META_KEY], str(path)).to_dict()
    image, input_problems = image_input(model)
    fits_input = image is not None and not input_problems
    report: dict[str, Any] = {
        "path": str(path), "kind": "onnx", "bytes": path.stat().st_size, "sha256": sha256_file(path),
        "external_data": [{"file": loc, "bytes_needed": need, "present": loc not in missing} for loc, need in external.items()],
        "ir_version": model.ir_version, "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": _io_rows(graph_inputs(model), lambda v: "image" if fits_input and v.name == image.name else "-"),
        "outputs": _io_rows(model.graph.output, lambda v: "-"),
        "nodes": sum(1 for _ in walk_nodes(model.graph)), "op_types": op_histogram(model), "parameters": parameter_count(model),
        "precision": props.get("fcn_deploy.precision", "fp32" if precision_problem(model) is None else "not fp32"),
        "metadata": meta, "probe": None,
    }  # fmt: skip
    problems = list(input_problems)
    notes: list[str] = []
    precision = precision_problem(model)
    if precision and meta is None:
        problems.append(f"{precision}: adopt the FP32 model (fcn-deploy makes the FP16 and INT8 graphs)")
    elif precision:
        notes.append(f"{precision}: build engines from, and validate against, the FP32 model")
    if missing:
        problems.append(f"its external data file(s) {', '.join(missing)} are missing: put them next to the model")
    chosen = kind = None
    if run and not missing and fits_input:
        chosen, kind = _probe(path, model, image, meta or {}, report, problems, notes)
    elif not run:
        notes.append("not run: output shapes are as declared")
    if fits_input:
        fixed = [axis for axis, d in zip(("height", "width"), dims_of(image)[2:]) if isinstance(d, int)]
        if fixed:
            notes.append(f"input {image.name!r} has a fixed {' and '.join(fixed)}: adopt makes them dynamic if the graph allows it")
    names = {o.name for o in model.graph.output}
    if problems:
        verdict = "does not fit"
    elif meta is not None and names & set(OUTPUT_NAMES.values()):
        verdict = "ready"
    else:
        verdict = "adoptable"
        notes.insert(0, "missing: fcn-deploy metadata (classes, normalisation, minimum size)" if meta is None
                     else "missing: an output named logits or mask")  # fmt: skip
    step = None
    if verdict == "adoptable":
        classes = report["probe"]["outputs"][chosen]["shape"][1] if kind == "logits" and report["probe"] and chosen else None
        step = next_step("adopt", path, out=path.with_name(path.stem + ".adopted.onnx"), num_classes=classes,
                         output=chosen if chosen and len(report["outputs"]) > 1 else None)  # fmt: skip
    elif verdict == "ready" and report["precision"] == "fp32":
        step = next_step("build-engine", path)
    report["fit"] = {"verdict": verdict, "fits": verdict != "does not fit", "problems": problems, "notes": notes, "next": step}
    return report


def _probe(path: Path, model, image, meta: dict, report: dict, problems: list[str], notes: list[str]) -> tuple[str | None, str | None]:
    """Run the model once (recorded in ``report["probe"]``); ``(output, kind)`` of the output that fits, if any."""
    n, h, w = first_probe_size(dims_of(image))
    report["probe"] = {"input": [n, 3, h, w]}
    try:
        results = Probe(path, path, meta.get("mean", IMAGENET_MEAN), meta.get("std", IMAGENET_STD)).run(n, h, w)
    except Exception as exc:  # noqa: BLE001 - FcnDeployError from loading, ORT's own errors from running
        report["probe"]["error"] = ort_message(exc)
        problems.append(f"ONNX Runtime cannot run it on a {n}x3x{h}x{w} image ({ort_message(exc)})")
        return None, None
    shapes = {name: (str(v.dtype), tuple(v.shape)) for name, v in results.items()}
    report["probe"]["outputs"] = {name: {"dtype": d, "shape": list(s)} for name, (d, s) in shapes.items()}
    try:
        chosen, kind, note = pick_output(shapes, (h, w))
    except FcnDeployError as exc:
        problems.append(str(exc))
        return None, None
    if note:
        notes.append(note)
    shape = shapes[chosen][1]
    low = spatial_size(kind, shape)
    strides = stride_candidates((h, w), low)
    if not strides:
        problems.append(f"output {chosen!r} is {'x'.join(map(str, shape))} for a {h}x{w} input: not the input size "
                        "nor a fixed fraction of it")  # fmt: skip
    elif strides != {1}:
        if kind == "mask":
            problems.append(f"mask output {chosen!r} is at {low[0]}x{low[1]} for a {h}x{w} input; export the logits")
        else:
            notes.append(f"logits come out at {low[0]}x{low[1]} for a {h}x{w} input (1/{min(strides)}): adopt adds a "
                         "bilinear resize to the input size")  # fmt: skip
    for row in report["outputs"]:
        if row["name"] == chosen:
            row["role"] = kind
    return chosen, kind


def _check_summary(check: dict[str, Any] | None) -> dict[str, Any] | None:
    """What an INT8 build's own check recorded: the nodes kept in float with their sensitivity, the bias
    correction, and the figures before and after."""
    if not check:
        return None
    keys = ("pixel_agreement", "min_size_agreement", "mean_iu", "passed")
    return {
        "float_nodes": check.get("float_nodes", []), "sensitivity": check.get("sensitivity", {}),
        "before": {k: check["before"].get(k) for k in keys}, "after": {k: check["after"].get(k) for k in keys},
        "int8_compute_share": check.get("int8_compute_share"), "runs_on": check.get("runs_on"), "sizes": check.get("sizes"),
        "bias_correction": bool(check.get("bias_correction")), "corrected_convs": check.get("corrected_convs", 0),
    }  # fmt: skip


def _inspect_engine(path: Path) -> dict[str, Any]:
    from ..backends import engine_backend, open_engine, read_manifest

    manifest = read_manifest(path)
    report: dict[str, Any] = {
        "path": str(path), "kind": "engine", "backend": manifest.get("backend"), "precision": manifest.get("precision"),
        "profile": manifest.get("profile"), "files": manifest.get("files"), "versions": manifest.get("versions"),
        "built_at": manifest.get("built_at"), "source_onnx": manifest.get("source_onnx"), "metadata": manifest.get("meta"),
        "rebuild_command": manifest.get("rebuild_command"), "inputs": [], "outputs": [], "backend_facts": None,
        "int8_check": _check_summary(manifest.get("int8_check")),
    }  # fmt: skip
    problems: list[str] = []
    try:
        backend = engine_backend(path, manifest)
        report["backend_facts"] = backend.describe()
        report.update(backend.describe_engine(path, manifest))
        with open_engine(path) as runner:
            for key, specs in (("inputs", runner.inputs), ("outputs", runner.outputs)):
                report[key] = [{"name": s.name, "role": "-", "dtype": s.dtype, "shape": list(s.shape),
                                "dynamic": [i for i, d in enumerate(s.shape) if not isinstance(d, int)]} for s in specs]  # fmt: skip
    except FcnDeployError as exc:
        problems.append(f"cannot open it here: {exc}")
    for row in report["inputs"][:1]:
        row["role"] = "image"
    for row in report["outputs"]:
        row["role"] = next((kind for kind, name in OUTPUT_NAMES.items() if name in row["name"]), "-")
    adopted = (report["metadata"] or {}).get("adopted") or {}
    reference = adopted.get("source_path") or "CHECKPOINT.pt"
    step = next_step("validate", path, reference=reference) if not problems else None
    report["fit"] = {"verdict": "ready" if not problems else "does not fit", "fits": not problems, "problems": problems,
                     "notes": [], "next": step}  # fmt: skip
    return report


def _inspect_checkpoint(path: Path) -> dict[str, Any]:
    from ..checkpoint import load_checkpoint
    from ..models import count_parameters

    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    layers = collections.Counter(type(m).__name__ for m in model.modules() if not list(m.children()))
    meta = ckpt.meta
    return {
        "path": str(path), "kind": "checkpoint", "bytes": path.stat().st_size, "sha256": sha256_file(path),
        "inputs": [{"name": INPUT_NAME, "role": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"],
                    "dynamic": [0, 2, 3]}],
        "outputs": [{"name": OUTPUT_NAMES["logits"], "role": "logits", "dtype": "float32",
                     "shape": ["batch", meta.num_classes, "height", "width"], "dynamic": [0, 2, 3]}],
        "nodes": sum(layers.values()), "op_types": dict(layers.most_common()), "parameters": count_parameters(model),
        "precision": "fp32", "metadata": meta.to_dict(),
        "fit": {"verdict": "ready", "fits": True, "problems": [], "notes": [], "next": next_step("export", path)},
    }  # fmt: skip
