"""Many inputs, images and videos mixed, through one :class:`Segmenter`: the work one process does.

Single-process ``infer SOURCE...`` runs :func:`segment_items` over every input, and each Ray actor
runs it over its batches (:mod:`.ray_batch`), so a mask is computed and written by the same code
either way.  Each input gives one row of the results table (:data:`ROW_FIELDS`): its path, status
(``done``, ``skipped`` with the reason, or ``complete`` when a rerun found its outputs already
there), its size, the pixels per class and the milliseconds it took.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import load_rgb, save_palette_png
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from .images import save_rgb_png
from .overlay import render_overlay
from .segmenter import Segmenter
from .sources import Item, Layout

ROW_FIELDS = ("path", "rel", "kind", "status", "reason", "height", "width", "frames", "class_pixels", "ms", "host", "pid")


@dataclass(frozen=True)
class ItemSettings:
    """How each input is segmented and written (picklable: Ray ships it to every actor)."""

    layout: Layout
    alpha: float = 0.5
    batch: int = 1
    convert_rgb: bool = False
    max_frames: int | None = None
    tile: str = "auto"  # images beyond the engine's profile in tiles (see .tiles)
    tile_overlap: int | None = None


def new_row(item: Item, status: str, reason: str = "", **facts: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"path": str(item.path), "rel": item.rel, "kind": item.kind, "status": status, "reason": reason,
                           "height": None, "width": None, "frames": 0, "class_pixels": None, "ms": None,
                           "host": socket.gethostname(), "pid": os.getpid()}  # fmt: skip
    row.update(facts)
    return row


def class_pixels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(mask.ravel(), minlength=num_classes)[:num_classes].astype(np.int64)


def _write_image(item: Item, image: np.ndarray, mask: np.ndarray, segmenter: Segmenter, settings: ItemSettings) -> None:
    layout, times = settings.layout, segmenter.times
    picture = None
    if layout.write_overlays:
        with times.measure("postprocess"):
            picture = render_overlay(image, mask, segmenter.meta, settings.alpha)
    with times.measure("encode"):
        save_palette_png(layout.mask_png(item), mask, segmenter.meta.palette)
        if picture is not None:
            save_rgb_png(layout.overlay_png(item), picture)


def _segment_images(items: Sequence[Item], segmenter: Segmenter, settings: ItemSettings, strict: bool,
                    on_skip: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """One engine call for up to ``settings.batch`` images; unreadable ones become skipped rows."""
    start = time.perf_counter()
    rows: dict[int, dict[str, Any]] = {}
    loaded: list[tuple[int, np.ndarray]] = []
    for index, item in enumerate(items):
        with segmenter.times.measure("decode"):
            try:
                loaded.append((index, load_rgb(item.path, convert=settings.convert_rgb)))
            except FcnDeployError as exc:
                if strict:
                    raise
                rows[index] = new_row(item, "skipped", str(exc))
                on_skip(str(exc))
    masks = segmenter.predict_batch([image for _, image in loaded]) if loaded else []
    num_classes = segmenter.meta.num_classes
    for (index, image), mask in zip(loaded, masks):
        _write_image(items[index], image, mask, segmenter, settings)
        rows[index] = new_row(items[index], "done", height=image.shape[0], width=image.shape[1], frames=1,
                              class_pixels=class_pixels(mask, num_classes).tolist())  # fmt: skip
    ms = 1000 * (time.perf_counter() - start) / max(len(loaded), 1)
    for index, _ in loaded:
        rows[index]["ms"] = ms
    return [rows[index] for index in range(len(items))]


def _segment_video(
    item: Item, segmenter: Segmenter, settings: ItemSettings, strict: bool, on_skip: Callable[[str], None]
) -> dict[str, Any]:
    from .video import run_video

    layout = settings.layout
    start = time.perf_counter()
    totals = np.zeros(segmenter.meta.num_classes, dtype=np.int64)

    def add(mask: np.ndarray) -> None:
        totals[:] += class_pixels(mask, len(totals))

    masks_dir = layout.frame_masks(item) if layout.video_masks else None
    try:
        facts = run_video(item.path, segmenter, layout.overlay_video(item), masks_dir=masks_dir, alpha=settings.alpha,
                          batch=settings.batch, max_frames=settings.max_frames, on_mask=add)  # fmt: skip
    except FcnDeployError as exc:
        if strict:
            raise
        on_skip(str(exc))
        return new_row(item, "skipped", str(exc))
    return new_row(item, "done", height=facts["height"], width=facts["width"], frames=facts["frames"],
                   class_pixels=totals.tolist(), ms=1000 * (time.perf_counter() - start))  # fmt: skip


def segment_items(
    items: Sequence[Item], segmenter: Segmenter, settings: ItemSettings, *, strict: bool = False,
    listener: Listener = SILENT, task: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per item, in order: images ``settings.batch`` per engine call (neighbours only),
    each video whole (decode, segment and encode in one place).  Unreadable inputs are skipped with
    a warning to ``listener`` (``strict``: the first one raises); ``task`` advances per input."""
    rows: list[dict[str, Any]] = []

    def on_skip(message: str) -> None:
        listener.note(f"skipped {message}", level="warning")

    index = 0
    while index < len(items):
        if items[index].kind == "video":
            rows.append(_segment_video(items[index], segmenter, settings, strict, on_skip))
            index += 1
            done = 1
        else:
            chunk = []
            while index < len(items) and items[index].kind == "image" and len(chunk) < settings.batch:
                chunk.append(items[index])
                index += 1
            rows += _segment_images(chunk, segmenter, settings, strict, on_skip)
            done = len(chunk)
        if task is not None:
            listener.advance(task, done)
    return rows


def remove_stale_temporaries(*folders: Path) -> int:
    """Remove the temporary files (``.NAME.XXXXXXXX.tmp.SUFFIX``, see :func:`fcn_deploy.fileio.atomic_path`)
    that a killed process left under ``folders``, so that only complete outputs remain."""
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.rglob(".*.tmp*"):
            parts = path.name.split(".")
            if path.is_file() and len(parts) >= 4 and "tmp" in parts[-2:]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed


def summarise(rows: Sequence[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """The totals a report and the final line carry."""
    done = [row for row in rows if row["status"] == "done"]
    images = sum(1 for row in done if row["kind"] == "image")
    frames = sum(int(row["frames"] or 0) for row in done if row["kind"] == "video")
    skipped = [{"path": row["path"], "reason": row["reason"]} for row in rows if row["status"] == "skipped"]
    return {
        "inputs": len(rows),
        "done": len(done),
        "images_done": images,
        "videos_done": len(done) - images,
        "video_frames": frames,
        "already_complete": sum(1 for row in rows if row["status"] == "complete"),
        "skipped": skipped,
        "wall_s": wall_s,
        "images_per_s": images / wall_s if wall_s else None,
        "frames_per_s": frames / wall_s if wall_s else None,
    }
