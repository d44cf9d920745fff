"""What several commands share: parsing HxW and batch flags, --report and --html paths, and the
library's option names mapped to this CLI's flags (library errors name options, the CLI names flags)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import FcnDeployError
from .app import console

#: The library's option names (FcnDeployError.options) -> this CLI's flags.
FLAGS = {
    "backend": "--backend", "precision": "--precision", "out": "--out", "calib_dir": "--calib", "calib_method": "--calib-method",
    "int8_target": "--int8-target", "float_nodes": "--float-nodes", "bias_correction": "--bias-correction", "int8_repair": "--int8-repair",
    "repair_budget": "--repair-budget", "repair_time_s": "--repair-time",
    "min_shape": "--min-shape", "opt_shape": "--opt-shape", "max_shape": "--max-shape", "batch": "--batch",
    "sizes": "--sizes", "images": "--images", "emulate_fp16": "--emulate-fp16", "server": "--server", "model": "--model",
    "host": "--host", "http_port": "--http-port", "grpc_port": "--grpc-port", "metrics_port": "--metrics-port",
    "triton_log": "--triton-log",
    "pixel_agreement": "--min-agreement", "size_floor": "--min-size-agreement", "confident_agreement": "--min-confident",
    "min_mean_iu": "--min-miou", "confidence_margin": "--margin", "thresholds": "--threshold",
    "alpha": "--alpha", "max_frames": "--max-frames", "strict": "--strict", "overwrite": "--overwrite", "save_masks": "--save-masks",
    "iters": "--iters", "warmup": "--warmup", "threads": "--threads", "concurrency": "--concurrency",
    "num_classes": "--num-classes", "classes": "--classes", "mean": "--mean", "std": "--std", "palette": "--palette",
    "output": "--output", "input_name": "--input-name", "min_size": "--min-size", "name": "--name", "instances": "--instances",
    "queue_delay_us": "--queue-delay-us", "max_batch": "--max-batch", "repo": "--repo", "report": "--report", "html": "--html",
    "tile": "--tile", "tile_overlap": "--tile-overlap", "ray": "--ray", "actors": "--actors", "cpus_per_actor": "--cpus-per-actor",
    "gpus_per_actor": "--gpus-per-actor", "task_inputs": "--task-inputs", "reference": "--reference", "engine": "--engine",
    "transport": "--transport",
}  # fmt: skip


def flags_for(options: tuple[str, ...]) -> str:
    """``--min-shape/--opt-shape`` for ``("min_shape", "opt_shape")``; backends' own options included."""
    from .. import backends

    table = dict(FLAGS)
    for name in backends.names():
        table.update({option.name: option.flag for option in backends.get(name).options})
    return "/".join(dict.fromkeys(table[o] for o in options if o in table))


def command_line(step: dict | None) -> str | None:
    """A next step from the library (``{"command", "args", "options"}``, options by their library
    names) as the command line a person types: ``fcn-deploy adopt m.onnx --out a.onnx``."""
    if step is None:
        return None
    parts = ["fcn-deploy", step["command"], *map(str, step.get("args", []))]
    for name, value in step.get("options", {}).items():
        parts += [flags_for((name,)) or "--" + name.replace("_", "-"), str(value)]
    return " ".join(shlex.quote(part) for part in parts)


def parse_hw(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    from ..validation import parse_sizes

    try:
        sizes = parse_sizes(text)
    except FcnDeployError as exc:
        raise FcnDeployError(f"{flag}: {exc}") from None
    if len(sizes) != 1:
        raise FcnDeployError(f"{flag} {text!r}: give one HEIGHTxWIDTH, e.g. 512x512")
    return sizes[0]


def parse_batch(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise FcnDeployError(f"--batch {text!r}: write N (static) or MIN,OPT,MAX, e.g. 1,4,8") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 1:
        raise FcnDeployError(f"--batch {text!r}: write N (static) or MIN,OPT,MAX with positive integers")
    return values[0], values[1], values[2]


def check_report(path: Path | None, *models: Path | None) -> None:
    """Refuse a --report path that would replace an engine's manifest, or make a model look like an
    engine (``<model>.json`` is where a manifest goes): checked before the run, so no work is wasted."""
    if path is None:
        return
    from ..backends.manifest import READABLE_FORMATS, manifest_path

    target = path.resolve()
    for model in filter(None, models):
        if target == manifest_path(model).resolve():
            raise FcnDeployError(f"--report {path}: {path.name} is where {Path(model).name}'s engine manifest goes; "
                                 "choose another report name")  # fmt: skip
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (ValueError, OSError):
            return
        if isinstance(existing, dict) and existing.get("format") in READABLE_FORMATS:
            raise FcnDeployError(f"--report {path}: is an engine manifest, and replacing it would orphan its engine; "
                                 "choose another report name")  # fmt: skip


def write_report(path: Path | None, data: dict) -> None:
    if path is None:
        return
    from ..fileio import atomic_write_json

    check_report(path)
    atomic_write_json(path, data)
    console.print(f"report: {path}")


#: The --html and --overwrite options of validate, benchmark and demo.
HtmlOption = Annotated[
    Optional[Path],
    typer.Option("--html", help="Also write a self-contained HTML page (plots, pictures) here.", metavar="PAGE.html"),
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --html page.")]


def check_html(path: Path | None, overwrite: bool) -> None:
    """Refuse a bad --html path before the run starts, so no work is wasted."""
    if path is not None:
        from ..render.html import check_page_path

        check_page_path(path, overwrite)


def write_html(path: Path | None, page: str) -> None:
    if path is None:
        return
    from ..render.html import write_page

    write_page(path, page)
    console.print(f"page: {path}")
