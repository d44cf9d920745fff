"""The console views of serve and export-triton: what was written or served, from their results."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape


def render_repository(console: Console, result: dict[str, Any]) -> None:
    """export-triton: the models it wrote, then the repository's README (how to run it)."""
    name = escape(result["model"])
    console.print(
        f"[green]wrote[/] {escape(result['repo'])}: model {name} = {name}_preprocess -> {name}_engine "
        f"({escape(result['platform'])}, {escape(result['precision'])}) -> {name}_postprocess; "
        f"max batch {result['max_batch_size']}, {result['instances']} instance(s) per model"
    )
    console.print(escape(result["readme"]))


def render_served(console: Console, result: dict[str, Any]) -> None:
    """serve, once stopped: how long draining took and what was served."""
    console.print(
        f"stopped in {result['drain_s']:.1f} s: served {result['requests']} request(s), {result['images']} image(s) "
        f"in {result['executions']} execution(s) (largest batch {result['largest_batch']}); "
        f"refused {result['refused']}, failed {result['failed']}"
    )
    stages = result.get("stage_ms_per_image") or {}
    if stages:
        console.print("  per image inside the server: " + ", ".join(f"{stage} {ms:.2f} ms" for stage, ms in stages.items()))
