"""benchmark: latency, throughput and memory of engines against PyTorch eager FP32, in one run.

Speed targets are only meaningful as ratios measured side by side, so every run times the
baseline (the PyTorch checkpoint, eager, FP32, on the same device) next to each engine, with the
same inputs, warm-up and thread count, and reports medians, p90s and speedups.

Per engine and size it also reports:

* peak memory: the largest process RSS growth while the engine loads and runs (sampled every
  2 ms from /proc; on CUDA, the device memory in use from ``torch.cuda.mem_get_info``);
* the achieved fraction of the machine's peak: the model's FLOPs at that size (conv and deconv
  multiply-adds x 2, counted on the PyTorch model) per second, over a measured FP32 matmul peak
  of the same device and thread count (an honest, attainable peak rather than a datasheet one).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from .checkpoint import load_checkpoint
from .data.images import preprocess
from .data.synthetic import make_scene
from .engines import load_runner, manifest_path, read_manifest
from .errors import FcnDeployError
from .fileio import sha256_file
from .runners.base import Runner
from .runners.torch_runner import TorchRunner


@dataclass
class Timing:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def peak_memory(device: str = "cpu"):
    """Yield a dict that ends up holding the peak memory growth (MB) during the block."""
    result: dict[str, float] = {}
    use_cuda = device == "cuda" and torch.cuda.is_available()
    read = (lambda: torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]) if use_cuda else _rss_bytes
    start = read()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], read())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], read())
        result["peak_mb"] = (peak[0] - start) / 1e6
        result["kind"] = "cuda_device_memory" if use_cuda else "rss_growth"


def count_flops(model: torch.nn.Module, height: int, width: int, batch: int = 1) -> float:
    """FLOPs (2 x multiply-adds) of the conv and deconv layers for one forward pass."""
    total = [0.0]

    def conv_hook(module, inputs, output) -> None:
        kernel = module.kernel_size[0] * module.kernel_size[1]
        in_per_group = module.in_channels // module.groups
        if isinstance(module, torch.nn.ConvTranspose2d):
            positions = inputs[0].shape[0] * inputs[0].shape[2] * inputs[0].shape[3]
            total[0] += 2.0 * positions * in_per_group * kernel * module.out_channels
        else:
            positions = output.shape[0] * output.shape[2] * output.shape[3]
            total[0] += 2.0 * positions * in_per_group * kernel * module.out_channels

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        with torch.inference_mode():
            model(torch.zeros(batch, 3, height, width))
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def measured_peak_gflops(device: str = "cpu", size: int = 1024, repeats: int = 5) -> float:
    """Attainable FP32 GFLOP/s: best of a few square matmuls on ``device``."""
    dev = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    best = float("inf")
    for _ in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def time_runner(runner: Runner, batch: np.ndarray, warmup: int, iters: int) -> Timing:
    """Wall time of ``runner.infer`` (device-resident inputs for TensorRT: the engine alone)."""
    call = lambda: runner.infer(batch)  # noqa: E731
    if hasattr(runner, "infer_torch"):
        device_batch = torch.from_numpy(batch).cuda()
        call = lambda: runner.infer_torch(device_batch)  # noqa: E731
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    arr = np.asarray(samples)
    return Timing(float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.mean()), float(arr.min()))


def find_reference(engine: Path) -> Path | None:
    """The checkpoint an engine came from: ``<source onnx stem>.pt`` whose sha256 matches."""
    candidates = []
    if manifest_path(engine).is_file():
        source = Path(read_manifest(engine).get("source_onnx", ""))
        candidates.append(source.with_suffix(".pt"))
    candidates.append(engine.with_name(engine.name.split(".")[0] + ".pt"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def _images(height: int, width: int, batch: int, meta) -> np.ndarray:
    scenes = np.stack([make_scene(4, i, height, width)[0] for i in range(batch)])
    return preprocess(scenes, meta.mean, meta.std)


def run_benchmark(
    engines: list[Path],
    reference: Path | None = None,
    sizes: list[tuple[int, int]] | None = None,
    batch: int = 1,
    warmup: int = 3,
    iters: int = 20,
    threads: int | None = None,
    console: Console | None = None,
) -> dict:
    """Time the PyTorch baseline and every engine at every size; return the report dict."""
    console = console or Console()
    sizes = sizes or [(512, 512)]
    if not engines:
        raise FcnDeployError("give at least one engine or ONNX file to benchmark")
    if warmup < 0 or iters < 1:
        raise FcnDeployError("--iters must be >= 1 and --warmup >= 0")
    if threads:
        torch.set_num_threads(threads)
    reference = reference or find_reference(Path(engines[0]))
    if reference is None:
        raise FcnDeployError(
            f"no PyTorch checkpoint found for the baseline of {engines[0]}; pass --reference CKPT"
        )
    ckpt = load_checkpoint(reference)
    meta = ckpt.meta
    devices = ["cpu"]
    runners_spec = []
    for path in engines:
        runners_spec.append(Path(path))
        if str(path).endswith((".plan", ".engine", ".trt")) and "cuda" not in devices:
            devices.append("cuda")
    machine = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "peak_gflops": {dev: measured_peak_gflops(dev) for dev in devices},
        "peak_kind": "measured FP32 matmul",
    }
    results: list[dict] = []
    baselines: dict[tuple[str, int, int], float] = {}
    reference_model = ckpt.build_model()
    flops_at = {(h, w): count_flops(reference_model, h, w, batch) for h, w in sizes}

    def record(runner: Runner, label: str, device: str, memory: dict, timings: dict) -> None:
        for (h, w), timing in timings.items():
            flops = flops_at[(h, w)]
            base = baselines.get((device, h, w))
            gflops = flops / (timing.median_ms / 1000) / 1e9
            results.append({
                "engine": label, "backend": runner.backend, "precision": runner.precision, "device": device,
                "height": h, "width": w, "batch": batch, "median_ms": timing.median_ms, "p90_ms": timing.p90_ms,
                "mean_ms": timing.mean_ms, "min_ms": timing.min_ms, "throughput_fps": batch * 1000.0 / timing.median_ms,
                "speedup_vs_torch": (base / timing.median_ms) if base else None, "peak_memory_mb": memory.get("peak_mb"),
                "memory_kind": memory.get("kind"), "gflop": flops / 1e9, "achieved_gflops": gflops,
                "fraction_of_peak": gflops / machine["peak_gflops"][device],
            })  # fmt: skip

    def measure(open_runner, label: str, device: str) -> None:
        with peak_memory(device) as memory:
            runner = open_runner()
            timings = {}
            for h, w in sizes:
                runner.profile.check(batch, h, w)
                timings[(h, w)] = time_runner(runner, _images(h, w, batch, meta), warmup, iters)
                if runner.backend == "torch":
                    baselines[(device, h, w)] = timings[(h, w)].median_ms
            runner.close()
        record(runner, label, device, memory, timings)
        console.print(f"  timed {label}")

    console.print(f"benchmark: {len(engines)} engine(s) + PyTorch eager baseline at {sizes}, batch {batch}, "
                  f"{warmup} warm-up + {iters} timed runs, {torch.get_num_threads()} threads")
    for device in devices:
        measure(lambda d=device: TorchRunner(ckpt, device=d), f"torch-eager ({reference.name})", device)
    for path in runners_spec:
        device = "cuda" if str(path).endswith((".plan", ".engine", ".trt")) else "cpu"
        measure(lambda p=path: load_runner(p, threads=threads), str(path), device)
    _print_table(console, results)
    return {
        "results": results,
        "baseline": {"backend": "torch", "precision": "fp32", "mode": "eager", "checkpoint": str(reference),
                     "checkpoint_sha256": sha256_file(reference)},
        "machine": machine,
        "settings": {"warmup": warmup, "iters": iters, "batch": batch, "sizes": [list(s) for s in sizes]},
    }  # fmt: skip


def _print_table(console: Console, results: list[dict]) -> None:
    table = Table(title="benchmark (median of timed runs)")
    for column in ("engine", "precision", "device", "N x H x W", "median ms", "p90 ms", "fps", "vs torch",
                   "peak MB", "GFLOP/s", "% of peak"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("engine", "precision", "device") else "right")
    for r in results:
        table.add_row(
            Path(r["engine"]).name if r["backend"] != "torch" else r["engine"], r["precision"], r["device"],
            f"{r['batch']}x{r['height']}x{r['width']}", f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}",
            f"{r['throughput_fps']:.2f}", "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x",
            "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}", f"{r['achieved_gflops']:.1f}",
            f"{r['fraction_of_peak'] * 100:.1f}%",
        )  # fmt: skip
    console.print(table)
