"""The main job and the machine: demo, backends, gpu-check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import EXIT_FAILED, FcnDeployError
from .app import BACKEND_CHOICES, app, console, listener
from .options import OverwriteOption, check_html


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where everything goes.")] = Path("demo-out"),
    force: Annotated[bool, typer.Option("--force", help="Rebuild everything, even what exists.")] = False,
    train_steps: Annotated[int, typer.Option("--train-steps", help="Training steps for the default model.")] = 0,
    backend: Annotated[str, typer.Option(help=f"auto (every usable backend) or one of: {BACKEND_CHOICES}.")] = "auto",
    html: Annotated[
        Optional[Path], typer.Option("--html", help="Also copy the page (always written to OUT/report.html) here.", metavar="PAGE.html")
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """The main job: data, train, eval, export, FP32/FP16/INT8 engines, validate, video, benchmark; OUT/report.html."""
    from ..demo import run_demo
    from ..render.demo import DemoConsole
    from ..render.html import demo_page, write_page

    check_html(html, overwrite)
    result = run_demo(out, force=force, train_steps=train_steps or None, backend=backend, listener=DemoConsole(console))
    page = demo_page(result.report, result.keepers, video=result.video, overlay=result.overlay, palette=result.palette)
    for path in (out / "report.html", *([html] if html else [])):
        write_page(path, page)
    if not result.passed:
        console.print("[red]FAILED[/]: an engine failed validation (see its table above)")
        raise typer.Exit(EXIT_FAILED)


@app.command("backends")
def backends_command(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    check: Annotated[
        Optional[str],
        typer.Option("--check", help="Run the conformance suite on this backend (a plugin's author's check).", metavar="NAME"),
    ] = None,
) -> None:
    """List the registered backends (plugins included): usable here or not (and why), and what `auto` picks."""
    from .. import backends
    from ..render.backends import print_backends

    if check is not None:
        _check_backend(check)
        return

    rows = [backends.get(name).describe() for name in backends.names()]
    rows += [{"name": name, "usable": False, "broken": True, "why": why} for name, why in backends.broken().items()]
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    print_backends(console, rows)


@app.command("gpu-check")
def gpu_check_command() -> None:
    """Say whether TensorRT and a CUDA device are usable here, and why not (exit 2 when they are not).

    scripts/gpu-check.sh runs the rest: install for the driver, GPU tests, demo, validation, benchmark."""
    from .. import backends
    from ..backends.onnxruntime import choose_providers
    from ..backends.tensorrt import gpu_info
    from ..engines import library_versions

    tensorrt = backends.get("tensorrt")
    usable, why = tensorrt.status()
    console.print(f"TensorRT: {'[green]usable[/]' if usable else '[yellow]not usable[/]'} ({why})")
    console.print(f"GPU: {gpu_info() or 'none'}")
    console.print(f"ONNX Runtime providers (auto): {choose_providers('auto')}")
    console.print(f"versions: {library_versions(tensorrt)}")
    if not usable:
        raise FcnDeployError(f"TensorRT is not usable here: {why}; {tensorrt.install_hint}")


def _check_backend(name: str) -> None:
    """``backends --check NAME``: the conformance suite on a small model trained here (about a minute)."""
    import tempfile

    from .. import backends
    from ..conformance import check_backend, tiny_model
    from ..render.backends import print_checks

    backends.get(name).require_usable()
    with tempfile.TemporaryDirectory(prefix="fcn-deploy-conformance-") as tmp:
        checkpoint, onnx_path, calibration = tiny_model(Path(tmp), listener=listener)
        results = check_backend(
            name, checkpoint=checkpoint, onnx_path=onnx_path, calib_dir=calibration, workdir=Path(tmp), listener=listener
        )
    print_checks(console, results)
    if not all(r.passed for r in results):
        raise typer.Exit(EXIT_FAILED)
