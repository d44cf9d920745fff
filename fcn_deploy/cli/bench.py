"""benchmark: engines against the PyTorch baseline, or a Triton server under load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import FcnDeployError
from .app import app, console, listener
from .options import HtmlOption, OverwriteOption, check_html, check_report, write_html, write_report


@app.command("benchmark")
def benchmark_command(
    engines: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Engines / ONNX files to time (with --server: the served engine, timed alone to compare).", metavar="ENGINE..."
        ),
    ] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", "-r", help="Checkpoint for the PyTorch eager baseline.")] = None,
    sizes: Annotated[str, typer.Option(help="Comma-separated HxW list.")] = "512x512",
    batch: Annotated[int, typer.Option(min=1, help="Batch size.")] = 1,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 3,
    iters: Annotated[int, typer.Option(min=1, help="Timed runs (median and p90 reported; with --server: per client).")] = 20,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch and ORT (default: all cores).")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write the JSON report here.")] = None,
    html: HtmlOption = None,
    overwrite: OverwriteOption = False,
    server: Annotated[
        Optional[str], typer.Option("--server", help="Measure a Triton server instead: HOST:PORT of its gRPC endpoint.")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="With --server: the served model's name.")] = "fcn",
    concurrency: Annotated[str, typer.Option(help="With --server: concurrent clients per level, e.g. 1,4,16.")] = "1,4,16",
    transport: Annotated[
        str, typer.Option("--transport", help="With --server: auto (system shared memory on the server's host, else gRPC) or grpc.")
    ] = "auto",
    cuda_graph: Annotated[
        bool, typer.Option("--cuda-graph", help="GPU engines that can (TensorRT) replay a CUDA graph per size (trtexec's --useCudaGraph).")
    ] = False,
    ray: Annotated[
        Optional[str],
        typer.Option("--ray", metavar="[ADDRESS]", help="Ray's images/s against single-process infer on ENGINE (alone: a local Ray)."),
    ] = None,
    images: Annotated[
        Optional[Path], typer.Option("--images", help="With --ray: the images (default: synthetic scenes at --sizes).")
    ] = None,
    inputs: Annotated[int, typer.Option("--inputs", min=1, help="With --ray: how many synthetic scenes.")] = 200,
    actors: Annotated[Optional[int], typer.Option("--actors", help="With --ray: engine actors (default: one per CPU).")] = None,
) -> None:
    """Time engines against the PyTorch eager FP32 baseline, in one run; or a Triton server under concurrency (--server);
    or Ray's images/s against single-process infer (--ray)."""
    from ..validation import parse_sizes

    check_html(html, overwrite)
    check_report(report, *(engines or []), reference)
    if ray:
        from ..bench.ray_compare import compare_ray
        from ..render.bench import print_ray_comparison

        if not engines or len(engines) != 1 or reference or server:
            raise FcnDeployError(
                "--ray compares one ENGINE run on Ray with the same engine in one process: give one ENGINE, no --reference/--server"
            )
        result = compare_ray(engines[0], images, address=ray, count=inputs, size=parse_sizes(sizes)[0], actors=actors, batch=batch,
                             listener=listener)  # fmt: skip
        print_ray_comparison(console, result)
        write_report(report, result)
        return
    if server:
        from ..bench.server import parse_concurrency, run_server_benchmark
        from ..render.bench import print_server_results

        if (engines and len(engines) > 1) or reference:
            raise FcnDeployError(
                "--server measures a running server: give at most one ENGINE (the served one, timed alone to compare) and no --reference"
            )
        if html:
            raise FcnDeployError("--html pages cover local engines; with --server, write --report JSON")
        if transport not in ("auto", "grpc"):
            raise FcnDeployError(f"--transport {transport!r}: choose auto or grpc", options=("transport",))
        levels = parse_concurrency(concurrency)
        result = run_server_benchmark(
            server, engine=engines[0] if engines else None, threads=threads, model=model, concurrency=levels,
            sizes=parse_sizes(sizes), warmup=warmup, iters=iters, shared_memory=transport == "auto", listener=listener,
        )  # fmt: skip
        print_server_results(console, result["results"], levels[0])
        write_report(report, result)
        return
    from ..bench import run_benchmark
    from ..render.bench import print_peaks, print_results

    result = run_benchmark(
        engines or [], reference=reference, sizes=parse_sizes(sizes), batch=batch, warmup=warmup, iters=iters,
        threads=threads, cuda_graph=cuda_graph, listener=listener,
    )  # fmt: skip
    print_results(console, result["results"])
    print_peaks(console, result)
    write_report(report, result)
    if html:
        from ..render.html import benchmark_page

        write_html(html, benchmark_page(result))
