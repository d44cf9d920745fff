"""debug: look inside a build (``debug precision``: which INT8 nodes break the masks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, console, listener
from .options import check_report, write_report

debug_app = typer.Typer(help="Look inside a build.", no_args_is_help=True)
app.add_typer(debug_app, name="debug")


@debug_app.command("precision")
def debug_precision_command(
    target: Annotated[Path, typer.Argument(help="An INT8 engine (through its manifest) or an INT8 Q/DQ ONNX.", metavar="GRAPH_OR_ENGINE")],
    reference: Annotated[Path, typer.Option("--reference", "-r", help="The FP32 ONNX the INT8 graph was built from.")],
    revert_top: Annotated[int, typer.Option("--revert-top", min=0, help="Also measure the worst N nodes kept in float alone.")] = 8,
    sizes: Annotated[Optional[str], typer.Option(help="Comma-separated HxW list (default 97x129,48x64,160x224).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="For a plain ONNX: the backend to run it on (default onnxruntime).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Real images (fitted to each size) instead of synthetic scenes.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write every node's errors as JSON.")] = None,
) -> None:
    """Each quantized node's output error against the FP32 graph, and the masks with the worst kept in float."""
    from ..precision_debug import DebugOptions, debug_precision
    from ..render.debug import print_node_errors
    from ..validation import parse_sizes

    check_report(report, target, reference)
    options = DebugOptions(revert_top=revert_top, sizes=parse_sizes(sizes) if sizes else None, backend=backend, images=images)
    result = debug_precision(target, reference, options, listener=listener)
    print_node_errors(console, result)
    write_report(report, result)


__all__ = ["debug_app"]
