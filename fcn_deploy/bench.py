"""benchmark: latency, throughput and memory of engines against PyTorch eager FP32, in one run.

Speed targets are only meaningful as ratios measured side by side, so every run times the baseline
(the PyTorch checkpoint, eager, FP32, on the same device) next to each engine, with the same
inputs, warm-up and thread count, and reports medians, the p10-p90 spread and speedups.

Fairness: each engine runs in **its own worker process**, loaded once, and the parent times them in
interleaved rounds of short blocks.  A runtime's worker threads keep spinning for a while after a
run (ONNX Runtime's pool, torch's OpenMP team); in one process those threads take cores from the
next engine, and the ratios then depend on the order (measured here: ORT INT8 looked 1.00-1.07x
ORT FP32 interleaved in one process and 1.41x alone).  In separate processes an idle engine's
threads are parked, each block starts after a short settle pause and one untimed call, and the
interleaving makes drift in machine speed (shared VMs, thermal limits) hit every engine alike.

Per engine and size it also reports:

* memory: the worker's peak RSS growth while the engine loads and warms up (CUDA engines: the
  device memory in use, from ``torch.cuda.mem_get_info``);
* the achieved fraction of the machine's peak: the model's FLOPs at that size (conv and deconv
  multiply-adds x 2, counted on the PyTorch model) per second, over a measured FP32 matmul peak
  of the same device and thread count (an attainable peak rather than a datasheet one).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .backends import Runner, manifest_path, read_manifest
from .data import SYNTHETIC_SEEDS
from .data.images import preprocess
from .data.synthetic import make_scene
from .errors import FcnDeployError
from .fileio import sha256_file

if TYPE_CHECKING:
    import torch

#: Timed calls per engine before the round moves on to the next one.
BLOCK = 5
#: Pause before each block, so the previous engine's spinning threads go idle first.
SETTLE_S = 0.05
#: Synthetic seed of the timing inputs (held out from training and validation).
BENCH_SEED = SYNTHETIC_SEEDS["bench"]


@dataclass(frozen=True)
class Contender:
    """Something to time: a checkpoint (the PyTorch eager baseline) or a model/engine file."""

    label: str
    path: str
    device: str = "cpu"


def scene_batch(height: int, width: int, batch: int, meta) -> np.ndarray:
    """Preprocessed synthetic scenes: image-like timing inputs (a held-out seed)."""
    scenes = np.stack([make_scene(BENCH_SEED, i, height, width)[0] for i in range(batch)])
    return preprocess(scenes, meta.mean, meta.std)


def infer_call(runner: Runner, batch: np.ndarray):
    """The call to time, the same for every runner on a device: on the CPU ``infer`` (host arrays
    in, logits and argmax mask out); on CUDA the forward pass alone on device-resident inputs, so
    the GPU engines and the GPU baseline are timed alike."""
    if runner.device == "cuda" and hasattr(runner, "infer_on_device"):
        import torch

        device_batch = torch.from_numpy(batch).to("cuda")
        return lambda: runner.infer_on_device(device_batch)  # type: ignore[attr-defined]
    return lambda: runner.infer(batch)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux: ``5`` into clear_refs), so the peak that
    follows is the engine's, not the imports'."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _open(contender: Contender, threads: int | None) -> Runner:
    from .backends import open_runner

    if contender.device == "cuda" and Path(contender.path).suffix in (".pt", ".pth"):
        from .backends.torch import TorchRunner

        return TorchRunner(contender.path, device="cuda")
    return open_runner(contender.path, threads=threads)


def _worker_main(conn, contender: Contender, threads: int | None, sizes: list[tuple[int, int]], batch: int, warmup: int) -> None:
    """A worker process: open one engine, warm it up, then time blocks on request."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    try:
        cuda = contender.device == "cuda"
        if cuda or Path(contender.path).suffix in (".pt", ".pth"):  # only torch's runners import torch here
            import torch

            if threads:
                torch.set_num_threads(threads)
            cuda = cuda and torch.cuda.is_available()
        used = (lambda: torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]) if cuda else _rss_bytes
        before = used()
        peak_tracked = not cuda and _reset_peak_rss()
        runner = _open(contender, threads)
        calls = {}
        peak = used()
        for h, w in sizes:
            runner.profile.check(batch, h, w)
            calls[(h, w)] = infer_call(runner, scene_batch(h, w, batch, runner.meta))
            for _ in range(max(1, warmup)):
                calls[(h, w)]()
                peak = max(peak, used())
        grown = max(peak, (_peak_rss_bytes() or 0) if peak_tracked else 0) - before
        conn.send(("ready", {"backend": runner.backend, "precision": runner.precision, "device": runner.device, "pid": os.getpid(),
                             "peak_memory_mb": grown / 1e6, "memory_kind": "cuda_device_memory" if cuda else "peak_rss_growth"}))  # fmt: skip
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            _, size, count = message
            call = calls[tuple(size)]
            call()  # untimed: caches and thread pools wake up
            samples = []
            for _ in range(count):
                start = time.perf_counter()
                call()
                samples.append((time.perf_counter() - start) * 1000.0)
            conn.send(("samples", samples))
        runner.close()
    except FcnDeployError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported by the parent as one line
        conn.send(("error", f"{contender.path}: {exc.__class__.__name__}: {exc}"))


class _Worker:
    def __init__(self, contender: Contender, threads: int | None, sizes, batch: int, warmup: int):
        ctx = multiprocessing.get_context("spawn")
        self.contender = contender
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child, contender, threads, sizes, batch, warmup), daemon=True,
            name=f"fcn-deploy-bench-{contender.label}",
        )  # fmt: skip
        self.process.start()
        child.close()
        self.info: dict[str, Any] = {}

    def receive(self, expected: str):
        try:
            while not self.conn.poll(1.0):  # a worker that died without closing its pipe is noticed too
                if not self.process.is_alive():
                    raise EOFError
            kind, payload = self.conn.recv()
        except EOFError:
            raise FcnDeployError(
                f"{self.contender.path}: the benchmark worker process died (exit code {self.process.exitcode}); its error, if any, is printed above"
            ) from None
        if kind == "error":
            raise FcnDeployError(payload)
        assert kind == expected, (kind, expected)
        return payload

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def time_contenders(
    contenders: list[Contender], sizes: list[tuple[int, int]], batch: int = 1, warmup: int = 3, iters: int = 20,
    threads: int | None = None, progress=None,
) -> list[tuple[dict[str, Any], dict[tuple[int, int], list[float]]]]:  # fmt: skip
    """Time every contender in its own worker process, in interleaved rounds of blocks.

    Returns, per contender, its info (backend, precision, device, memory) and its samples (ms) per size.
    """
    workers: list[_Worker] = []
    try:
        workers.extend(_Worker(c, threads, sizes, batch, warmup) for c in contenders)
        for worker in workers:
            worker.info = worker.receive("ready")
        samples = {(i, size): [] for i in range(len(workers)) for size in sizes}
        total = len(samples) * iters
        while any(len(s) < iters for s in samples.values()):
            for (i, size), got in samples.items():
                count = min(BLOCK, iters - len(got))
                if count <= 0:
                    continue
                time.sleep(SETTLE_S)
                workers[i].conn.send(("block", size, count))
                got.extend(workers[i].receive("samples"))
                if progress:
                    progress(sum(len(s) for s in samples.values()), total)
        return [(w.info, {size: samples[(i, size)] for size in sizes}) for i, w in enumerate(workers)]
    finally:
        for worker in workers:
            worker.close()


def count_flops(model: torch.nn.Module, height: int, width: int, batch: int = 1) -> float:
    """FLOPs (2 x multiply-adds) of the conv and deconv layers for one forward pass."""
    import torch

    total = [0.0]

    def conv_hook(module, inputs, output) -> None:
        kernel = module.kernel_size[0] * module.kernel_size[1]
        in_per_group = module.in_channels // module.groups
        if isinstance(module, torch.nn.ConvTranspose2d):
            positions = inputs[0].shape[0] * inputs[0].shape[2] * inputs[0].shape[3]
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
    import torch

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


def summarise(samples_ms: list[float]) -> dict[str, float]:
    """Median and spread (p10, p90, min, max, mean) of timed runs, in milliseconds."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(arr)), "p10_ms": float(np.percentile(arr, 10)), "p90_ms": float(np.percentile(arr, 90)),
        "min_ms": float(arr.min()), "max_ms": float(arr.max()), "mean_ms": float(arr.mean()),
    }  # fmt: skip


def find_reference(engine: Path) -> Path | None:
    """The checkpoint an engine came from: ``<source onnx stem>.pt`` next to its source ONNX."""
    candidates = []
    if manifest_path(engine).is_file():
        source = Path(read_manifest(engine).get("source_onnx", ""))
        candidates.append(source.with_suffix(".pt"))
    candidates.append(engine.with_name(engine.name.split(".")[0] + ".pt"))
    return next((c for c in candidates if c.is_file()), None)


def _adopted(path: Path) -> bool:
    """Whether ``path`` (an engine or an ONNX) comes from `fcn-deploy adopt`, which has no checkpoint."""
    if manifest_path(path).is_file():
        return bool(read_manifest(path).get("meta", {}).get("adopted"))
    if path.suffix.lower() == ".onnx":
        from .onnxfile import read_onnx
        from .meta import ONNX_META_KEY, read_onnx_props

        props = read_onnx_props(read_onnx(path, load_data=False))
        return ONNX_META_KEY in props and bool(json.loads(props[ONNX_META_KEY]).get("adopted"))
    return False


def _engine_device(path: Path) -> str:
    """cpu or cuda, from the manifest's backend (a plain ONNX runs on the CPU here)."""
    if manifest_path(path).is_file():
        from . import backends

        manifest = read_manifest(path)
        if manifest.get("backend") in backends.REGISTRY:
            return backends.get(manifest["backend"]).engine_device(manifest)
    return "cpu"


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
    import torch

    from .checkpoint import load_checkpoint

    console = console or Console()
    sizes = sizes or [(512, 512)]
    if not engines:
        raise FcnDeployError("give at least one engine or ONNX file to benchmark")
    if warmup < 0 or iters < 1:
        raise FcnDeployError("--iters must be >= 1 and --warmup >= 0")
    if threads:
        torch.set_num_threads(threads)
    engines = [Path(e) for e in engines]
    for engine in engines:
        if not engine.is_file():
            raise FcnDeployError(f"engine not found: {engine}")
    reference = reference or find_reference(engines[0])
    if reference is not None and Path(reference).suffix.lower() == ".onnx":
        raise FcnDeployError(f"--reference {reference}: the baseline is PyTorch eager, from a checkpoint (.pt); leave "
                             "--reference out to time the engines alone")  # fmt: skip
    if reference is None and not _adopted(engines[0]):
        raise FcnDeployError(f"no PyTorch checkpoint found for the baseline of {engines[0]}; pass --reference CKPT")
    engine_devices = [_engine_device(p) for p in engines]
    devices = ["cpu"] + (["cuda"] if "cuda" in engine_devices else [])
    contenders = [Contender(str(p), str(p), d) for p, d in zip(engines, engine_devices)]
    flops_at: dict[tuple[int, int], float | None] = dict.fromkeys(sizes)
    if reference is None:  # an adopted ONNX has no PyTorch model to time or count FLOPs on
        console.print(f"[yellow]{engines[0]} was adopted from a foreign ONNX and has no PyTorch checkpoint: "
                      "timing the engines alone, without a PyTorch baseline or FLOP counts[/]")  # fmt: skip
    else:
        ckpt = load_checkpoint(reference)
        contenders = [Contender(f"torch-eager ({reference.name})", str(reference), d) for d in devices] + contenders
        reference_model = ckpt.build_model()
        flops_at = {(h, w): count_flops(reference_model, h, w, batch) for h, w in sizes}
        del reference_model
    console.print(
        f"benchmark: {len(engines)} engine(s){' + PyTorch eager baseline' if reference else ''} at {sizes}, batch {batch}, {warmup} warm-up + "
        f"{iters} timed runs each, every engine in its own process, interleaved in blocks of {BLOCK}; "
        f"threads: {threads or 'each runtime default'}"
    )
    with console.status("loading engines in their worker processes") as status:
        timed = time_contenders(
            contenders, sizes, batch, warmup, iters, threads,
            progress=lambda done, total: status.update(f"timing: {done}/{total} runs"),
        )  # fmt: skip
    machine = {
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "peak_gflops": {dev: measured_peak_gflops(dev) for dev in devices},
        "peak_kind": "measured FP32 matmul (INT8/FP16 engines can exceed 100 %)",
    }
    baselines = {
        (info["device"], size): float(np.median(samples[size]))
        for (info, samples), c in zip(timed, contenders) if info["backend"] == "torch" for size in sizes
    }  # fmt: skip
    results = []
    for contender, (info, samples) in zip(contenders, timed):
        for h, w in sizes:
            stats = summarise(samples[(h, w)])
            base = baselines.get((info["device"], (h, w)))
            flops = flops_at[(h, w)]
            gflops = flops / (stats["median_ms"] / 1000) / 1e9 if flops else None
            results.append({
                "engine": contender.label, "label": f"{info['backend']}-{info['precision']}", "backend": info["backend"],
                "precision": info["precision"], "device": info["device"], "height": h, "width": w, "batch": batch,
                **stats, "throughput_fps": batch * 1000.0 / stats["median_ms"],
                "speedup_vs_torch": (base / stats["median_ms"]) if base else None,
                "peak_memory_mb": info["peak_memory_mb"], "memory_kind": info["memory_kind"],
                "gflop": flops / 1e9 if flops else None, "achieved_gflops": gflops,
                "fraction_of_peak": gflops / machine["peak_gflops"][info["device"]] if gflops else None, "samples_ms": samples[(h, w)],
                "worker_pid": info["pid"],
            })  # fmt: skip
    print_results(console, results)
    return {
        "results": results,
        "baseline": {"backend": "torch", "precision": "fp32", "mode": "eager", "checkpoint": str(reference),
                     "checkpoint_sha256": sha256_file(reference)} if reference else None,
        "machine": machine,
        "settings": {"warmup": warmup, "iters": iters, "batch": batch, "sizes": [list(s) for s in sizes],
                     "isolation": "one worker process per engine",
                     "order": f"interleaved blocks of {BLOCK}, {SETTLE_S * 1000:.0f} ms settle + 1 untimed call before each"},
    }  # fmt: skip


def ratio(results: list[dict], numerator: str, denominator: str, size: tuple[int, int] | None = None) -> float | None:
    """How many times faster ``numerator`` (a ``label`` such as ``openvino-int8``) ran than
    ``denominator``, by median latency, at ``size`` (default: the first size measured)."""
    picked = {}
    for r in results:
        if size is None or (r["height"], r["width"]) == tuple(size):
            size = size or (r["height"], r["width"])
            key = "torch-fp32" if r["backend"] == "torch" else r["label"]
            picked.setdefault(key, r["median_ms"])
    if numerator not in picked or denominator not in picked:
        return None
    return picked[denominator] / picked[numerator]


def print_results(console: Console, results: list[dict]) -> None:
    table = Table(title="benchmark (median of timed runs; p10-p90 spread)")
    for column in ("backend", "precision", "device", "N x H x W", "median ms", "p10-p90 ms", "fps", "vs torch",
                   "peak MB", "GFLOP/s", "% of peak", "file"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("backend", "precision", "device", "file") else "right")
    for r in results:
        table.add_row(
            r["backend"], r["precision"], r["device"],
            f"{r['batch']}x{r['height']}x{r['width']}", f"{r['median_ms']:.1f}", f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}",
            f"{r['throughput_fps']:.2f}", "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x",
            "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
            "-" if r["achieved_gflops"] is None else f"{r['achieved_gflops']:.1f}",
            "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak'] * 100:.1f}%",
            Path(r["engine"]).name if r["backend"] != "torch" else r["engine"],
        )  # fmt: skip
    console.print(table)
