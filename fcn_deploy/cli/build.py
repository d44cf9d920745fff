"""Commands that make artefacts: export, inspect, adopt, build-engine."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from .. import precisions
from ..errors import FcnDeployError
from ..render.build import render_build
from ..render.console import ConsoleListener
from ..render.validation import case_line
from .app import BACKEND_CHOICES, app, console, listener
from .options import check_report, parse_batch, parse_hw, write_report


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pt).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="ONNX file (default: next to the checkpoint).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17..23).")] = 20,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Fix the batch to 1.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify", help="Simplify with onnxslim (verified again).")] = False,
    mask_output: Annotated[bool, typer.Option("--mask-output", help="Add an int64 argmax 'mask' output.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write the check as JSON.")] = None,
) -> None:
    """Export to ONNX (dynamic N, H, W) and verify ONNX Runtime against PyTorch at many sizes."""
    from ..export import ExportOptions, export_onnx

    out = out or checkpoint.with_suffix(".onnx")
    check_report(report, out)
    result = export_onnx(checkpoint, out, ExportOptions(opset, static_batch, simplify, mask_output), listener=CaseLines(console))
    write_report(report, result)


class CaseLines(ConsoleListener):
    """The console listener, printing one line per size the export checks."""

    def result(self, kind: str, value: Any) -> None:
        if kind == "export_case":
            self.note_markup("  " + case_line(value))


@app.command("inspect")
def inspect_command(
    model: Annotated[Path, typer.Argument(help="Any .onnx, an engine (with its manifest) or a .pt checkpoint.")],
    run: Annotated[bool, typer.Option("--run/--no-run", help="Run an ONNX once in ONNX Runtime to see its real output shapes.")] = True,
    report: Annotated[Optional[Path], typer.Option(help="Write everything shown as JSON.")] = None,
) -> None:
    """Show a model's inputs/outputs, opset, ops, parameters and metadata, and whether it fits the toolkit."""
    from ..adopt import inspect_model
    from ..render.inspect import print_inspection
    from .options import command_line

    check_report(report, model)
    result = inspect_model(model, run=run)
    result["fit"]["next"] = command_line(result["fit"]["next"])
    print_inspection(console, result)
    write_report(report, result)


@app.command("adopt")
def adopt_command(
    model: Annotated[Path, typer.Argument(help="A segmentation ONNX exported elsewhere (FP32).", metavar="MODEL.onnx")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The adopted ONNX to write (one file, with fcn-deploy metadata).")],
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", min=2, help="Classes (checked against the logits' C).")] = None,
    classes: Annotated[
        Optional[str], typer.Option(help="Class names a,b,c, or a file (.json list / {class_names, palette}, or one per line).")
    ] = None,
    mean: Annotated[Optional[str], typer.Option(help="Normalisation mean r,g,b in 0..1 (default ImageNet's 0.485,0.456,0.406).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation std r,g,b in 0..1 (default ImageNet's 0.229,0.224,0.225).")] = None,
    palette: Annotated[Optional[str], typer.Option(help="Colours r,g,b;r,g,b (0..255) or a JSON file (default: VOC colour map).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", help="The logits output to keep, when there are several.")] = None,
    min_size: Annotated[Optional[int], typer.Option("--min-size", min=2, help="Smallest input side (default: found by running).")] = None,
    input_name: Annotated[Optional[str], typer.Option("--input-name", help="The image input, when the graph lists several.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write what adopt did as JSON.")] = None,
) -> None:
    """Bring a foreign segmentation ONNX in: verify it runs at many sizes, write a copy every command takes."""
    from ..adopt import AdoptOptions, adopt
    from .adopt_options import parse_class_names, parse_palette, parse_rgb_floats

    check_report(report, out, model)
    names, file_palette = parse_class_names(classes) if classes is not None else (None, None)
    options = AdoptOptions(
        num_classes=num_classes, class_names=names, palette=parse_palette(palette) if palette is not None else file_palette,
        mean=parse_rgb_floats(mean, "--mean") if mean is not None else None,
        std=parse_rgb_floats(std, "--std") if std is not None else None, output=output, input_name=input_name, min_size=min_size,
    )  # fmt: skip
    result = adopt(model, out, options, listener=listener)
    where = escape(str(out))
    console.print(f"[green]wrote[/] {where} ({out.stat().st_size / 1e6:.1f} MB); next: fcn-deploy build-engine {where}")
    write_report(report, result)


def _backend_option_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per backend-owned build option (TensorRT's --workspace, a plugin's own ...),
    shown under that backend's heading in --help."""
    from .. import backends

    parameters, seen = [], set()
    for name in backends.names():
        for option in backends.get(name).options:
            if option.name in seen:
                continue
            seen.add(option.name)
            default = f" (default {option.default})" if option.default is not None else ""
            annotation = Annotated[Optional[option.type], typer.Option(option.flag, help=f"{option.help}{default}",
                                                                       rich_help_panel=f"{name} options")]  # fmt: skip
            parameters.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return parameters


def build_engine_command(
    onnx_path: Annotated[Path, typer.Argument(help="Exported FP32 ONNX.", metavar="MODEL.onnx")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Engine path (default: next to the ONNX).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help=f"{', '.join(precisions.names())} (default fp32).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Alias of --precision fp16.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Alias of --precision int8.")] = False,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration images (default: calibration/).")] = None,
    calib_method: Annotated[Optional[str], typer.Option(help="INT8: minmax, entropy or percentile (default minmax).")] = None,
    backend: Annotated[str, typer.Option(help=f"auto or one of: {BACKEND_CHOICES}.")] = "auto",
    int8_target: Annotated[
        Optional[str],
        typer.Option(
            "--int8-target", help="Build the INT8 graph with this backend's activation encoding (default: the compiling backend's)."
        ),
    ] = None,
    float_nodes: Annotated[
        Optional[str], typer.Option("--float-nodes", help="INT8: keep these nodes (comma-separated names) in float.")
    ] = None,
    bias_correction: Annotated[
        bool,
        typer.Option(
            "--bias-correction", help="INT8: fold each quantized conv's mean output error on the calibration images into its bias."
        ),
    ] = False,
    int8_repair: Annotated[
        Optional[str],
        typer.Option(
            "--int8-repair",
            help="INT8: auto (check the compiled engine; if it fails, correct the biases, then keep nodes in float), float-nodes or off.",
        ),
    ] = None,
    repair_budget: Annotated[
        Optional[int], typer.Option("--repair-budget", help="INT8 repair: the most nodes kept in float (default 24).")
    ] = None,
    repair_time: Annotated[
        Optional[float], typer.Option("--repair-time", help="INT8 repair: seconds the search may take (default 1200).")
    ] = None,
    min_shape: Annotated[Optional[str], typer.Option("--min-shape", help="HxW (default: the arch minimum).")] = None,
    opt_shape: Annotated[Optional[str], typer.Option("--opt-shape", help="HxW (default: the training size).")] = None,
    max_shape: Annotated[Optional[str], typer.Option("--max-shape", help="HxW (default: the recommended max).")] = None,
    batch: Annotated[Optional[str], typer.Option(help="N or MIN,OPT,MAX (default 1,1,8).")] = None,
    **backend_options: Any,
) -> None:
    """Build an FP32, FP16 or INT8 engine (any registered backend) with a JSON manifest."""
    from ..engines import BuildOptions, build_engine

    chosen = [p for p, flag in ((precision, precision), ("fp16", fp16), ("int8", int8)) if flag]
    if len(set(chosen)) > 1:
        raise FcnDeployError("choose one precision: --precision, --fp16 or --int8")
    opts = BuildOptions(
        precision=chosen[0] if chosen else "fp32", backend=backend, min_shape=parse_hw(min_shape, "--min-shape"),
        opt_shape=parse_hw(opt_shape, "--opt-shape"), max_shape=parse_hw(max_shape, "--max-shape"), batch=parse_batch(batch),
        calib_dir=calib, calib_method=calib_method or "minmax", int8_target=int8_target,
        float_nodes=tuple(n.strip() for n in (float_nodes or "").split(",") if n.strip()), bias_correction=bias_correction,
        int8_repair=int8_repair,
        repair_budget=repair_budget, repair_time_s=repair_time,
        backend_options={k: v for k, v in backend_options.items() if v is not None},
    )  # fmt: skip
    manifest = build_engine(onnx_path, out, opts, listener=listener)
    render_build(console, manifest, onnx_path.with_name(manifest["engine"]) if out is None else out)


def _register_build_engine() -> None:
    signature = inspect.signature(build_engine_command, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    parameters = fixed + _backend_option_parameters()
    build_engine_command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    build_engine_command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    app.command("build-engine")(build_engine_command)


_register_build_engine()
