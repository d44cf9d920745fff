"""validate: an engine (or a served model) against the FP32 reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import EXIT_FAILED, FcnDeployError
from ..render.console import ConsoleListener
from .app import app, console
from .options import HtmlOption, OverwriteOption, check_html, check_report, write_html, write_report


@app.command("validate")
def validate_command(
    engine: Annotated[Optional[Path], typer.Argument(help="Engine, or any ONNX file (or --server).")] = None,
    reference: Annotated[
        Optional[Path],
        typer.Option(
            "--reference",
            "-r",
            help="The FP32 reference: the PyTorch checkpoint (.pt) or an FP32 ONNX (e.g. the original an adopted model came from).",
        ),
    ] = None,
    sizes: Annotated[Optional[str], typer.Option(help="Comma-separated HxW list, e.g. 97x129,333x517.")] = None,
    random_sizes: Annotated[int, typer.Option("--random-sizes", help="Extra seeded random sizes.")] = 4,
    images: Annotated[Optional[Path], typer.Option(help="Real images (fitted to each size).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size per case.")] = 1,
    precision: Annotated[Optional[str], typer.Option(help="Threshold set (default: the engine's).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", help="Pixel agreement over all sizes (0..1).")] = None,
    min_size_agreement: Annotated[
        Optional[float], typer.Option("--min-size-agreement", help="Floor on each size's pixel agreement (0..1).")
    ] = None,
    min_confident: Annotated[Optional[float], typer.Option("--min-confident", help="Confident-pixel agreement.")] = None,
    min_miou: Annotated[Optional[float], typer.Option("--min-miou", help="Mean IU vs the reference, over all sizes.")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Logit margin above which a pixel is confident.")] = None,
    max_side: Annotated[Optional[int], typer.Option("--max-side", help="Cap the default sizes' largest side.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random sizes.")] = 0,
    report: Annotated[Optional[Path], typer.Option(help="Write the JSON report here.")] = None,
    html: HtmlOption = None,
    overwrite: OverwriteOption = False,
    emulate_fp16: Annotated[
        bool, typer.Option("--emulate-fp16", help="ENGINE is a checkpoint: run it in float16 and judge it by the FP16 thresholds.")
    ] = False,
    server: Annotated[Optional[str], typer.Option("--server", help="Validate the model a Triton server serves: HOST:PORT (gRPC).")] = None,
    model: Annotated[str, typer.Option("--model", help="With --server: the served model's name.")] = "fcn",
    threshold: Annotated[
        Optional[list[str]], typer.Option("--threshold", help="Any limit by name, NAME=VALUE (repeatable), e.g. min_mean_iu=0.98.")
    ] = None,
) -> None:
    """Check the engine's masks against the FP32 reference (checkpoint or ONNX) at many sizes (exit 1 on failure)."""
    from ..render.validation import print_validation
    from ..validation import ExampleKeeper, ValidateOptions, validate_engine

    if (engine is None) == (server is None):
        raise FcnDeployError("give an ENGINE to validate, or --server HOST:PORT to validate a served model")
    if emulate_fp16 and server:
        raise FcnDeployError("--emulate-fp16 runs a checkpoint in float16 here; it does not apply to --server")
    check_report(report, engine, reference)
    if reference is None:
        raise FcnDeployError("--reference is required: the FP32 model the engine is checked against (a .pt checkpoint or an FP32 ONNX)")
    check_html(html, overwrite)
    keeper = ExampleKeeper() if html else None
    limits = {
        "pixel_agreement": min_agreement, "size_floor": min_size_agreement, "confident_agreement": min_confident,
        "min_mean_iu": min_miou, "confidence_margin": margin, **parse_limits(threshold or []),
    }  # fmt: skip
    options = ValidateOptions(
        sizes=sizes, random_sizes=random_sizes, images=images, batch=batch, precision=precision, limits=limits,
        max_side=max_side, seed=seed, keep_examples=keeper, emulate_fp16=emulate_fp16, server=server, model=model,
    )  # fmt: skip
    plan = PlanPrinter(console)
    result = validate_engine(engine, reference, options, listener=plan)
    print_validation(console, result)
    write_report(report, result.to_dict())
    if html:
        from ..render.html import validation_page

        write_html(html, validation_page(result.to_dict(), keeper))
    if not result.passed:
        raise typer.Exit(EXIT_FAILED)


def parse_limits(items: list[str]) -> dict[str, float]:
    """``--threshold NAME=VALUE`` (any limit a registered metric reads)."""
    limits = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            limits[name.strip()] = float(value)
        except ValueError:
            raise FcnDeployError(f"--threshold {item!r}: write NAME=VALUE, e.g. min_mean_iu=0.97") from None
        if not sep:
            raise FcnDeployError(f"--threshold {item!r}: write NAME=VALUE, e.g. min_mean_iu=0.97")
    return limits


class PlanPrinter(ConsoleListener):
    """The console listener, plus the plan line (sizes and thresholds) when validation starts."""

    def result(self, kind: str, value: Any) -> None:
        if kind == "validation_plan":
            from ..render.validation import print_plan

            print_plan(self.console, value["sizes"], value["thresholds"])
