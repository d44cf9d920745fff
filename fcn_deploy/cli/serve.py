"""Triton: serve, export-triton."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, console, listener


@app.command("serve")
def serve_command(
    engine: Annotated[Path, typer.Argument(help="Engine, ONNX file or checkpoint to serve.")],
    name: Annotated[str, typer.Option(help="Model name clients ask for.")] = "fcn",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP/REST endpoint (KServe v2).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC endpoint.")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Prometheus metrics (/metrics).")] = 8002,
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", help="Largest batch Triton forms (default: the profile's).")] = None,
    queue_delay_us: Annotated[int, typer.Option("--queue-delay-us", help="How long Triton holds a request to fill a batch.")] = 0,
    instances: Annotated[int, typer.Option(help="Engine instances running batches in parallel.")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per instance (default: cores / instances).")] = None,
    triton_log: Annotated[Optional[Path], typer.Option("--triton-log", help="Keep Triton's own log in this file.")] = None,
) -> None:
    """Serve an engine with NVIDIA's Triton Inference Server (UINT8 image in, mask out) until Ctrl-C / SIGTERM."""
    from ..render.serve import render_served
    from ..serve.triton import serve

    result = serve(
        engine, name=name, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        max_batch=max_batch, queue_delay_us=queue_delay_us, instances=instances, threads=threads, triton_log=triton_log,
        listener=listener,
    )  # fmt: skip
    render_served(console, result)


@app.command("export-triton")
def export_triton_command(
    engine: Annotated[Path, typer.Argument(help="Engine (TensorRT, ONNX Runtime or OpenVINO) or exported ONNX.")],
    repo: Annotated[Path, typer.Option("--repo", help="Model repository folder to write.")],
    name: Annotated[str, typer.Option(help="Model name clients ask for (the ensemble).")] = "fcn",
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", help="max_batch_size (default: the profile's).")] = None,
    queue_delay_us: Annotated[int, typer.Option("--queue-delay-us", help="Dynamic batcher queue delay.")] = 0,
    instances: Annotated[int, typer.Option(help="instance_group count of each model.")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing repository.")] = False,
) -> None:
    """Write a Triton model repository (engine served natively + pre/post-processing + ensemble) for NVIDIA's container."""
    from ..render.serve import render_repository
    from ..serve.repository import export_triton

    result = export_triton(
        engine, repo, name=name, max_batch=max_batch, queue_delay_us=queue_delay_us, instances=instances, overwrite=overwrite,
        listener=listener,
    )  # fmt: skip
    render_repository(console, result)
