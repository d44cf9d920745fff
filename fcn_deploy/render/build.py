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
