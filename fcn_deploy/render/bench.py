"""The console views of benchmark: the local engines' table and the server benchmark's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _or_dash(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{suffix}"


def _peak_cell(r: dict[str, Any]) -> str:
    """``46.2% int8``: the share of the peak of the engine's own arithmetic (red above 100 %: a bug)."""
    if r.get("fraction_of_peak") is None:
        return "-"
    text = f"{r['fraction_of_peak'] * 100:.1f}% {r.get('peak_kind', '')}".strip()
    return f"[red]{text}[/]" if r.get("above_peak") else text


def print_peaks(console: Console, report: dict[str, Any]) -> None:
    """The peaks the rows are held against, with the kernel that reached each."""
    for device, peaks in (report.get("machine", {}).get("peaks") or {}).items():
        parts = [f"{kind} {p['gops']:.0f} GOP/s ({escape(p['source'])})" for kind, p in peaks.items()]
        console.print(f"peaks on {device} (the best of before and after the engines): " + "; ".join(parts))
    if report.get("machine", {}).get("flop_count"):
        console.print(f"operations counted: {escape(report['machine']['flop_count'])}")


def print_results(console: Console, results: list[dict[str, Any]]) -> None:
    """One row per contender and size (``run_benchmark(...)["results"]``); the baseline's file is its label."""
    table = Table(title="benchmark (median of timed runs; p10-p90 spread)")
    gpu = any(r.get("gpu_median_ms") is not None for r in results)
    for column in ("backend", "precision", "device", "N x H x W", "median ms", *(["GPU ms"] if gpu else []), "p10-p90 ms", "fps",
                   "vs torch", "peak MB", "GOP/s", "% of peak", "file"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("backend", "precision", "device", "file") else "right")
    for r in results:
        table.add_row(
            escape(r["backend"]), escape(r["precision"]), escape(r["device"]),
            f"{r['batch']}x{r['height']}x{r['width']}", f"{r['median_ms']:.1f}",
            *([_or_dash(r.get("gpu_median_ms"), ".2f")] if gpu else []), f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}",
            f"{r['throughput_fps']:.2f}", _or_dash(r["speedup_vs_torch"], ".2f", "x"), _or_dash(r["peak_memory_mb"], ".0f"),
            _or_dash(r["achieved_gflops"], ".1f"),
            _peak_cell(r),
            escape(r["engine"] if r.get("baseline") else Path(r["engine"]).name),
        )  # fmt: skip
    console.print(table)


def print_server_results(console: Console, results: list[dict[str, Any]], first_level: int) -> None:
    """One row per size and concurrency level (``run_server_benchmark(...)["results"]``); ``first_level``
    is the level the throughput is compared with.  With the engine timed alone, two more columns:
    the latency overhead and the throughput against the engine's own."""
    alone = any(r.get("engine_ms") for r in results)
    table = Table(title="benchmark --server (client-side latency; server figures from Triton's statistics)")
    columns = ["clients", "H x W", "req/s", f"vs {first_level}", "p50 ms", "p90 ms", "p99 ms", "images/exec", "queue ms", "compute ms"]
    if alone:
        columns += ["engine ms", "overhead", "vs engine"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        cells = [
            str(r["concurrency"]), f"{r['height']}x{r['width']}", f"{r['throughput_rps']:.1f}",
            f"{r['throughput_vs_first_level']:.2f}x",
            f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}", _or_dash(r["server_avg_batch"], ".2f"),
            _or_dash(r["server_queue_ms"], ".1f"), _or_dash(r["server_compute_ms"], ".1f"),
        ]  # fmt: skip
        if alone:
            overhead = f"{r['overhead'] * 100:+.0f} %" if r.get("overhead") is not None else "-"
            vs_engine = f"{r['vs_engine']:.2f}x" if r.get("vs_engine") is not None else "-"
            cells += [_or_dash(r.get("engine_ms"), ".1f"), overhead, vs_engine]
        table.add_row(*cells)
    console.print(table)
    cpu = [f"{r['client_cpu_ms_per_request']:.1f}" for r in results if r.get("client_cpu_ms_per_request") is not None]
    if cpu:
        console.print(f"client CPU per request: {', '.join(cpu)} ms (taken from the server when both share a host)")
    transports = sorted({r["transport"] for r in results if r.get("transport")})
    if transports:
        console.print(f"images and masks through: {', '.join(transports)}")


def print_ray_comparison(console: Console, result: dict[str, Any]) -> None:
    """benchmark --ray: both runs' rates and the ratio."""
    table = Table(title=escape(f"Ray against one process: {result['engine']}, {result['images']}"))
    for column in ("run", "images", "wall s", "first output s", "images/s", "steady images/s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, run in result["runs"].items():
        label = name.replace("_", " ")
        if run.get("ray"):
            label += f" ({run['ray']['nodes']} node{'s' * (run['ray']['nodes'] != 1)}, {run['ray']['actors']} actors)"
        steady = run["steady_images_per_s"]
        table.add_row(escape(label), str(run["images"]), f"{run['wall_s']:.1f}", f"{run['first_output_s']:.1f}", f"{run['images_per_s']:.1f}",
                      f"{steady:.1f}" if steady else "-")  # fmt: skip
    console.print(table)
    steady = result["ratio_steady"]
    console.print(f"Ray / one process: {f'{steady:.2f}x' if steady else '-'} steady, {result['ratio_end_to_end']:.2f}x end to end (start-up included); "
                  f"masks {'identical' if result['masks_identical'] else '[red]differ[/]'}")  # fmt: skip
