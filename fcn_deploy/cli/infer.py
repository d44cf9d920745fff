"""infer: videos, images and folders through an engine, locally or on a Triton server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EXIT_PARTIAL, FcnDeployError
from .app import app, console, listener
from .options import check_report, write_report


@app.command("infer")
def infer_command(
    source: Annotated[Path, typer.Argument(help="Video file, image, or folder of images.")],
    engine: Annotated[Optional[Path], typer.Option("--engine", "-e", help="Engine, ONNX file or checkpoint.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output video / folder.")] = None,
    alpha: Annotated[float, typer.Option(help="Mask overlay opacity (0..1).")] = 0.5,
    save_masks: Annotated[Optional[Path], typer.Option("--save-masks", help="Also write per-frame label PNGs.")] = None,
    batch: Annotated[
        Optional[int], typer.Option(min=1, help="Frames per inference batch (default 1; with --server: frames in flight, default 8).")
    ] = None,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="Stop after N frames.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    convert_rgb: Annotated[bool, typer.Option("--convert-rgb", help="Convert grayscale/RGBA images to RGB.")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first unreadable image (default: skip it with a warning, exit 3).")
    ] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write the timing summary (and any skipped images) as JSON.")] = None,
    server: Annotated[
        Optional[str], typer.Option("--server", help="Run on a Triton server instead: HOST:PORT of its gRPC endpoint.")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="With --server: the served model's name.")] = "fcn",
    tile: Annotated[
        str, typer.Option("--tile", help="Overlapping tiles at full resolution: auto (images beyond the engine's max), on, off (resize).")
    ] = "auto",
    tile_overlap: Annotated[
        Optional[int], typer.Option("--tile-overlap", min=0, help="Pixels tiles share (default: from the receptive field).")
    ] = None,
) -> None:
    """Segment a video (overlay video out) or images (mask PNGs + overlays), locally or on a Triton server;
    exit 3 when images were skipped."""
    from ..backends.remote import DEFAULT_IN_FLIGHT
    from ..inference import InferOptions, run_infer
    from ..render.infer import print_summary

    if (engine is None) == (server is None):
        raise FcnDeployError("give --engine ENGINE to run locally, or --server HOST:PORT to run on a Triton server")
    check_report(report, engine, source)
    options = InferOptions(
        out=out, alpha=alpha, save_masks=save_masks, batch=batch or (DEFAULT_IN_FLIGHT if server else 1), max_frames=max_frames,
        overwrite=overwrite, convert_rgb=convert_rgb, strict=strict, server=server, model=model, tile=tile,
        tile_overlap=tile_overlap,
    )  # fmt: skip
    summary = run_infer(source, engine, options, listener=listener)
    print_summary(console, summary)
    write_report(report, summary)
    if summary.get("skipped"):
        raise typer.Exit(EXIT_PARTIAL)
