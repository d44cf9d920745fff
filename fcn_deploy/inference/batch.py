"""An archive run, before and after the work: what to do, and what was done.

:func:`plan_run` expands the sources, fixes the output layout and, unless overwriting, sets aside
the inputs whose outputs are already complete (a rerun resumes).  :func:`finish_run` removes what
killed workers left half-written, writes the results table (``OUT/results.parquet``, one row per
input: rows of inputs found complete are carried over from the previous table) and returns the
summary.  :func:`run_local` is the single-process run between the two; :mod:`.ray_batch` the Ray one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..fileio import atomic_path, ensure_writable_dir
from .archive import ROW_FIELDS, ItemSettings, new_row, remove_stale_temporaries, segment_items, summarise
from .segmenter import Segmenter
from .sources import Item, Layout, expand_sources, sources_base_name

RESULTS_NAME = "results.parquet"


@dataclass
class Plan:
    """The inputs of a run, split into those to segment and those already complete."""

    sources: list[str]
    out: Path
    layout: Layout
    items: list[Item]
    todo: list[Item]
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS_NAME

    def unit(self) -> str:
        return "images" if all(item.kind == "image" for item in self.items) else "inputs"


def plan_run(sources: Sequence[str | Path], opts: Any) -> Plan:
    """``opts`` is an :class:`~fcn_deploy.inference.InferOptions`."""
    items = expand_sources(list(sources))
    if opts.max_frames is not None:
        items = items[: opts.max_frames] if all(item.kind == "image" for item in items) else items
    out = Path(opts.out) if opts.out else Path.cwd() / f"{sources_base_name(list(sources))}_masks"
    if out.exists() and not out.is_dir():
        raise FcnDeployError(f"output {out} is a file; give a folder for the masks and overlays", options=("out",))
    masks = Path(opts.save_masks) if opts.save_masks else out / "masks"
    layout = Layout(masks, out / "overlays", write_overlays=opts.overlays, video_masks=opts.video_masks or bool(opts.save_masks))
    todo = list(items) if opts.overwrite else [item for item in items if not layout.complete(item)]
    plan = Plan([str(source) for source in sources], out, layout, items, todo)
    if len(todo) < len(items):
        plan.previous = read_results(plan.results_path)
    return plan


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The previous run's rows by path (none when there is no readable table)."""
    if not path.is_file():
        return {}
    try:
        import pyarrow.parquet as pq

        return {row["path"]: row for row in pq.read_table(path).to_pylist()}
    except Exception:  # noqa: BLE001 - an unreadable old table only costs the carried-over facts
        return {}


def write_results(path: Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    """The results table, atomically; None where pyarrow is not installed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    schema = pa.schema([
        ("path", pa.string()), ("rel", pa.string()), ("kind", pa.string()), ("status", pa.string()), ("reason", pa.string()),
        ("height", pa.int64()), ("width", pa.int64()), ("frames", pa.int64()), ("class_pixels", pa.list_(pa.int64())),
        ("ms", pa.float64()), ("host", pa.string()), ("pid", pa.int64()),
    ])  # fmt: skip
    table = pa.Table.from_pylist([{name: row.get(name) for name in ROW_FIELDS} for row in rows], schema=schema)
    ensure_writable_dir(path.parent)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def complete_rows(plan: Plan) -> list[dict[str, Any]]:
    """Rows for the inputs found complete: the previous table's facts, status ``complete``."""
    todo = {item.path for item in plan.todo}
    rows = []
    for item in plan.items:
        if item.path not in todo:
            row = dict(plan.previous.get(str(item.path)) or new_row(item, "complete"))
            row.update(status="complete", reason="")
            rows.append(row)
    return rows


def finish_run(plan: Plan, rows: Sequence[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Sweep temporaries, order the rows as the inputs, write the table; returns the summary."""
    remove_stale_temporaries(plan.layout.masks, plan.layout.overlays)
    by_path = {row["path"]: row for row in [*complete_rows(plan), *rows]}
    ordered = [by_path[str(item.path)] for item in plan.items if str(item.path) in by_path]
    summary = summarise(ordered, wall_s)
    if not summary["done"] and not summary["already_complete"] and summary["skipped"]:
        where = plan.sources[0] if len(plan.sources) == 1 else "the sources"
        raise FcnDeployError(
            f"{where}: none of its {len(plan.items)} {plan.unit()} could be read (first: {summary['skipped'][0]['reason']}); "
            "replace or remove them"
        )
    if any(row["status"] == "done" for row in ordered) or plan.results_path.exists():
        summary["results"] = str(write_results(plan.results_path, ordered) or "") or None
    summary.update(
        kind="images" if plan.unit() == "images" else "archive",
        sources=plan.sources,
        output=str(plan.out),
        masks_dir=str(plan.layout.masks),
        overlays_dir=str(plan.layout.overlays),
        images_found=len(plan.items),
        frames=summary["images_done"] + summary["video_frames"],
    )
    return summary


def run_local(plan: Plan, segmenter: Segmenter, settings: ItemSettings, *, strict: bool, listener: Listener = SILENT,
              description: str = "inputs") -> tuple[list[dict[str, Any]], float]:  # fmt: skip
    """Every input to do, in this process; returns the rows and the wall time."""
    start = time.perf_counter()
    listener.start("infer", total=len(plan.todo), description=description, unit=plan.unit())
    try:
        rows = segment_items(plan.todo, segmenter, settings, strict=strict, listener=listener, task="infer")
    finally:
        listener.finish("infer")
        with contextlib.suppress(OSError):
            remove_stale_temporaries(plan.layout.masks, plan.layout.overlays)
    return rows, time.perf_counter() - start
