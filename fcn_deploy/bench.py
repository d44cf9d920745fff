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


#: Timed calls per runner before the round-robin moves on.
BLOCK = 5


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


def measured_peak_gflops(device: str = "cpu", size: int = 2048, repeats: int = 8) -> float:
    """Attainable FP32 GFLOP/s: best of several square matmuls on ``device``.  INT8 engines can
    exceed it (their arithmetic is not FP32), which the report's ``peak_kind`` says."""
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


def _infer_call(runner: Runner, batch: np.ndarray):
    """The call to time, the same for every runner on a device: on the CPU ``infer`` (host arrays
    in, logits and argmax mask out), on CUDA (PyTorch, TensorRT) the forward pass alone on
    device-resident inputs, so the GPU engine and the GPU baseline are timed alike."""
    if getattr(runner, "device", None) is not None and runner.device.type == "cuda":
        device_batch = torch.from_numpy(batch).to(runner.device)
        return lambda: runner.infer_torch(device_batch)
    return lambda: runner.infer(batch)


def warm_up(runner: Runner, batch: np.ndarray, runs: int) -> None:
    call = _infer_call(runner, batch)
    for _ in range(runs):
        call()


def _summarise(samples_ms: list[float]) -> Timing:
    arr = np.asarray(samples_ms)
    return Timing(float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.mean()), float(arr.min()))


def time_runner(runner: Runner, batch: np.ndarray, iters: int) -> Timing:
    """Wall time of ``iters`` calls of one runner (warm it up first)."""
    call = _infer_call(runner, batch)
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return _summarise(samples)


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


def scene_batch(height: int, width: int, batch: int, meta) -> np.ndarray:
    """Preprocessed synthetic scenes: image-like timing inputs (a held-out seed)."""
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
    devices = ["cpu"] + (["cuda"] if any(_is_plan(p) for p in engines) else [])
    machine = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "peak_gflops": {dev: measured_peak_gflops(dev) for dev in devices},
        "peak_kind": "measured FP32 matmul (INT8/FP16 engines can exceed 100 %)",
    }
    reference_model = ckpt.build_model()
    flops_at = {(h, w): count_flops(reference_model, h, w, batch) for h, w in sizes}
    inputs = {(h, w): scene_batch(h, w, batch, meta) for h, w in sizes}

    # Load and warm every runner first; memory is sampled during that (the steady-state peak) and
    # the sampler is stopped before timing: on a 2-core machine its wake-ups would skew latency.
    contenders: list[tuple[str, str, Runner, dict]] = []
    openers = [(f"torch-eager ({reference.name})", d, lambda d=d: TorchRunner(ckpt, device=d)) for d in devices]
    openers += [(str(p), "cuda" if _is_plan(p) else "cpu", lambda p=p: load_runner(p, threads=threads)) for p in engines]
    console.print(f"benchmark: {len(engines)} engine(s) + PyTorch eager baseline at {sizes}, batch {batch}, "
                  f"{warmup} warm-up + {iters} timed runs interleaved, {torch.get_num_threads()} threads")
    for label, device, open_runner in openers:
        with peak_memory(device) as memory:
            runner = open_runner()
            for h, w in sizes:
                runner.profile.check(batch, h, w)
                warm_up(runner, inputs[(h, w)], max(1, warmup))
        contenders.append((label, device, runner, memory))

    # Timed runs go round-robin over the runners in short blocks, so drift in machine speed (shared
    # VMs, thermal limits) hits every runner alike and the ratios stay meaningful.  Each block starts
    # with one untimed call: the previous runtime's thread pool may still be spinning.
    samples: dict[tuple[int, tuple[int, int]], list[float]] = {
        (i, size): [] for i in range(len(contenders)) for size in sizes
    }
    calls = {(i, size): _infer_call(c[2], inputs[size]) for i, c in enumerate(contenders) for size in sizes}
    while any(len(s) < iters for s in samples.values()):
        for key, call in calls.items():
            call()
            for _ in range(min(BLOCK, iters - len(samples[key]))):
                start = time.perf_counter()
                call()
                samples[key].append((time.perf_counter() - start) * 1000)
    baselines = {
        (c[1], size): float(np.median(samples[(i, size)])) for i, c in enumerate(contenders) if c[2].backend == "torch"
        for size in sizes
    }  # fmt: skip
    results = []
    for i, (label, device, runner, memory) in enumerate(contenders):
        for h, w in sizes:
            timing = _summarise(samples[(i, (h, w))])
            base = baselines.get((device, (h, w)))
            gflops = flops_at[(h, w)] / (timing.median_ms / 1000) / 1e9
            results.append({
                "engine": label, "backend": runner.backend, "precision": runner.precision, "device": device,
                "height": h, "width": w, "batch": batch, "median_ms": timing.median_ms, "p90_ms": timing.p90_ms,
                "mean_ms": timing.mean_ms, "min_ms": timing.min_ms, "throughput_fps": batch * 1000.0 / timing.median_ms,
                "speedup_vs_torch": (base / timing.median_ms) if base else None, "peak_memory_mb": memory.get("peak_mb"),
                "memory_kind": memory.get("kind"), "gflop": flops_at[(h, w)] / 1e9, "achieved_gflops": gflops,
                "fraction_of_peak": gflops / machine["peak_gflops"][device],
            })  # fmt: skip
        runner.close()
    _print_table(console, results)
    return {
        "results": results,
        "baseline": {"backend": "torch", "precision": "fp32", "mode": "eager", "checkpoint": str(reference),
                     "checkpoint_sha256": sha256_file(reference)},
        "machine": machine,
        "settings": {"warmup": warmup, "iters": iters, "batch": batch, "sizes": [list(s) for s in sizes],
                     "order": f"round-robin blocks of {BLOCK}"},
    }  # fmt: skip


def _is_plan(path: str | Path) -> bool:
    return str(path).endswith((".plan", ".engine", ".trt"))


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
