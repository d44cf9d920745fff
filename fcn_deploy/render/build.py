"""The console view of build-engine: what was built, where, for which profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..artefacts import manifest_path


def render_build(console: Console, manifest: dict[str, Any], engine: Path) -> None:
    profile = manifest["profile"]
    files = ", ".join(f["name"] for f in manifest["files"])
    float_nodes = (manifest.get("transform", {}).get("int8") or {}).get("float_nodes") or []
    kept = f"; {len(float_nodes)} node(s) kept in float" if float_nodes else ""
    console.print(
        f"[green]built[/] {escape(str(engine))} ({manifest['backend']}, {manifest['precision']}{kept}; files {escape(files)}; "
        f"profile N,H,W {profile['min']} .. {profile['max']}, opt {profile['opt']}); manifest {escape(str(manifest_path(engine)))}"
    )
    check = manifest.get("int8_check")
    if check:
        after = check["after"]
        verdict = "[green]passed[/]" if after["passed"] else "[red]FAILED[/]"
        repaired = f", {len(check['float_nodes'])} node(s) kept in float" if check["float_nodes"] else ""
        if check.get("bias_correction"):
            repaired += f", biases of {check.get('corrected_convs', 0)} conv(s) corrected"
        share = check.get("int8_compute_share")
        console.print(
            f"INT8 check on {escape(check['runs_on'])} at {len(check['sizes'])} sizes: {verdict}{repaired}; agreement "
            f"{after['pixel_agreement']:.4%}, lowest size {after['min_size_agreement']:.4%}, mIU vs FP32 {after['mean_iu']:.4f}"
            + (f"; {share:.1%} of the convolution work in INT8" if share is not None else "")
        )
