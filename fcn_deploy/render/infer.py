"""The console view of infer: time per stage, the FPS, and how many images were skipped."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The stage table, then, for a folder of images, how many were processed and skipped; a Ray
    run has no stage table (its stages ran in the actors), only its final line."""
    if summary.get("ray"):
        print_archive_line(console, summary)
        return
    unit = "images" if summary["kind"] == "images" else "frames"
    table = Table(title=escape(f"infer: {summary['frames']} {unit} -> {summary['output']}"))
    table.add_column("stage")
    table.add_column("ms / frame", justify="right")
    for stage, ms in summary["ms_per_frame"].items():
        table.add_row(stage, f"{ms:.2f}")
    table.add_row("end-to-end FPS", f"{summary['end_to_end_fps']:.1f}", style="bold")
    if summary["engine_fps"]:
        table.add_row("engine-only FPS", f"{summary['engine_fps']:.1f}")
    console.print(table)
    tiles = summary.get("tiles") or {}
    if tiles.get("tiled_frames"):
        context = tiles.get("context")
        source = (f"from the receptive field: logits settle {context['reach']} px from a tile's edge" if context and tiles["overlap_from"] == "estimate"
                  else "given")  # fmt: skip
        tile_h, tile_w = tiles["tile_hw"]
        console.print(f"tiled {tiles['tiled_frames']} {unit} at full size: {tiles['tiles']} tiles of {tile_h}x{tile_w}, "
                      f"overlap {tiles['overlap']} px ({source})")  # fmt: skip
    if summary["kind"] == "archive":
        print_archive_line(console, summary)
    elif summary.get("images_found", 0) > 1 or summary.get("already_complete"):
        skipped = len(summary.get("skipped") or [])
        line = f"processed {summary['frames']} of {summary['images_found']} images"
        console.print(f"{line}; [yellow]skipped {skipped} unreadable[/] (listed in --report)" if skipped else line)
        if summary.get("already_complete"):
            console.print(f"{summary['already_complete']} already complete (kept; overwrite to redo them)")


def print_archive_line(console: Console, summary: dict[str, Any]) -> None:
    """The final line of an archive run: inputs, rates, skipped, complete from before, retried."""
    ray = summary.get("ray") or {}
    where = f" on {ray['nodes']} Ray node{'s' * (ray['nodes'] != 1)}, {ray['actors']} actors" if ray else ""
    rates = f"{summary['images_per_s'] or 0:.1f} images/s, {summary['frames_per_s'] or 0:.1f} frames/s"
    counts = (f"{summary['images_done']} images, {summary['videos_done']} videos ({summary['video_frames']} frames) of "
              f"{summary['inputs']} inputs")  # fmt: skip
    skipped = len(summary.get("skipped") or [])
    tail = [f"[yellow]skipped {skipped} unreadable[/] (listed in --report)" if skipped else "skipped 0"]
    if summary.get("already_complete"):
        tail.append(f"{summary['already_complete']} already complete")
    if ray:
        tail.append(f"retried {ray.get('retried', 0)}")
    console.print(escape(f"infer{where}: {counts} in {summary['wall_s']:.1f} s -> {summary['output']}"))
    console.print(f"{rates}; " + "; ".join(tail))
