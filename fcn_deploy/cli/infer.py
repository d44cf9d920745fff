"""infer: videos, images, folders, globs and lists through an engine, locally, on a Triton server or on Ray."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EXIT_PARTIAL, FcnDeployError
from .app import app, console, listener
from .options import check_report, write_report

#: What may follow ``--ray`` as its address; anything else is the next argument, and ``--ray`` alone means a local Ray.
RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-]+:\d+)$")


def normalise_ray_flag(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional address: give a bare ``--ray`` the value ``local``."""
    out = list(argv)
    for index, arg in enumerate(out):
        if arg == "--ray" and (index + 1 == len(out) or not RAY_ADDRESS.match(out[index + 1])):
            return [*out[: index + 1], "local", *out[index + 1 :]]
    return out


@app.command("infer")
def infer_command(
    sources: Annotated[list[str], typer.Argument(help="Video, image, folder (recursive), glob, or .txt list of paths; several allowed.")],
    engine: Annotated[
        Optional[list[Path]],
        typer.Option("--engine", "-e", help="Engine, ONNX file or checkpoint (with --ray: repeat it, one TensorRT plan per GPU kind)."),
    ] = None,
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
    no_overlays: Annotated[bool, typer.Option("--no-overlays", help="Folders/lists: write no overlay PNGs for images.")] = False,
    video_masks: Annotated[bool, typer.Option("--video-masks", help="Folders/lists: also write each video's frame masks.")] = False,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray", metavar="[ADDRESS]", help="Run on Ray: alone, a local Ray; or join ADDRESS (auto, ray://HOST:PORT, HOST:PORT)."
        ),
    ] = None,
    actors: Annotated[
        Optional[int], typer.Option("--actors", help="With --ray: engine actors (default: as the cluster's CPUs allow).")
    ] = None,
    cpus_per_actor: Annotated[float, typer.Option("--cpus-per-actor", help="With --ray: CPUs (= runtime threads) per actor.")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option("--gpus-per-actor", help="With --ray: GPUs per actor.")] = 0.0,
    task_inputs: Annotated[int, typer.Option("--task-inputs", min=1, help="With --ray: inputs per Ray task.")] = 4,
) -> None:
    """Segment videos (overlay video out) and images (mask PNGs + overlays), locally, on a Triton server or on Ray;
    folders, globs and lists mirror their tree under OUT/masks and OUT/overlays and resume; exit 3 when inputs were skipped."""
    from ..backends.remote import DEFAULT_IN_FLIGHT
    from ..inference import InferOptions, run_infer
    from ..render.infer import print_summary

    if (not engine) == (server is None):
        raise FcnDeployError("give --engine ENGINE to run locally, or --server HOST:PORT to run on a Triton server")
    if engine and len(engine) > 1 and not ray:
        raise FcnDeployError("several --engine files are for --ray (each actor opens the first its node accepts); give one")
    for source in sources:
        check_report(report, *(engine or []), Path(source))
    options = InferOptions(
        out=out, alpha=alpha, save_masks=save_masks, batch=batch or (DEFAULT_IN_FLIGHT if server else 1), max_frames=max_frames,
        overwrite=overwrite, convert_rgb=convert_rgb, strict=strict, server=server, model=model, tile=tile,
        tile_overlap=tile_overlap, overlays=not no_overlays, video_masks=video_masks, ray=ray, actors=actors,
        cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, task_inputs=task_inputs,
    )  # fmt: skip
    chosen = (engine if ray else engine[0]) if engine else None
    summary = run_infer(sources[0] if len(sources) == 1 else sources, chosen, options, listener=listener)
    print_summary(console, summary)
    write_report(report, summary)
    if summary.get("skipped"):
        raise typer.Exit(EXIT_PARTIAL)
