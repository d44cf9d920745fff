"""The timing core: one worker process per engine, timed by the parent in interleaved blocks.

Fairness: each engine runs in **its own worker process**, loaded once, and the parent times them in
interleaved rounds of short blocks.  A runtime's worker threads keep spinning for a while after a
run (ONNX Runtime's pool, torch's OpenMP team); in one process those threads take cores from the
next engine, and the ratios then depend on the order.  In separate processes an idle engine's
threads are parked, each block starts after a short settle pause and one untimed call, and the
interleaving makes drift in machine speed (shared VMs, thermal limits) hit every engine alike.

Memory is the worker's peak RSS growth while the engine loads and warms up (CUDA engines: the
growth of the device memory in use, from ``torch.cuda.mem_get_info``, which counts the whole GPU: so
CUDA workers load and warm up **one at a time**, each engine's peak measured alone).

On a GPU each timed call also records its GPU time, apart from the host's wall time: the runner's own
CUDA events around the execution where it keeps them (``last_gpu_ms``: TensorRT), else two events
on the current stream around the call.  The PyTorch CUDA baseline runs FP32 with TF32 off (torch's
cuDNN default is TF32); a ``tf32`` contender is the same model with TF32 on, a row of its own.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artefacts import is_checkpoint
from ..backends import Runner
from ..data import SYNTHETIC_SEEDS
from ..data.images import preprocess
from ..data.synthetic import make_scene
from ..errors import FcnDeployError
from ..events import SILENT, Listener

#: Timed calls per engine before the round moves on to the next one.
BLOCK = 5
#: Pause before each block, so the previous engine's spinning threads go idle first.
SETTLE_S = 0.05
#: Synthetic seed of the timing inputs (held out from training and validation).
BENCH_SEED = SYNTHETIC_SEEDS["bench"]


@dataclass(frozen=True)
class Contender:
    """Something to time: a checkpoint (the PyTorch eager baseline) or a model/engine file.

    ``baseline`` marks the contender the others' speed-ups are measured against (one per device).
    """

    label: str
    path: str
    device: str = "cpu"
    baseline: bool = False
    #: CUDA only: TF32 matrix multiplies and convolutions allowed (the baseline has them off).
    tf32: bool = False
    #: Replay a CUDA graph per shape where the runner can (``use_cuda_graph``).
    cuda_graph: bool = False


def check_runs(warmup: int, iters: int) -> None:
    """Refuse run counts that time nothing (shared by the local and the server benchmark)."""
    if iters < 1:
        raise FcnDeployError(f"iters must be at least 1 (timed runs), not {iters}", options=("iters",))
    if warmup < 0:
        raise FcnDeployError(f"warmup must be at least 0 (untimed runs), not {warmup}", options=("warmup",))


def scene_batch(height: int, width: int, batch: int, meta) -> np.ndarray:
    """Preprocessed synthetic scenes: image-like timing inputs (a held-out seed)."""
    scenes = np.stack([make_scene(BENCH_SEED, i, height, width)[0] for i in range(batch)])
    return preprocess(scenes, meta.mean, meta.std)


def infer_call(runner: Runner, batch: np.ndarray):
    """The call to time, the same for every runner on a device: ``infer`` as ``infer``, video and
    ``serve`` call it (host arrays in, the argmax mask out, the logits where the runner cannot leave
    them out) where the runner runs on host arrays; the forward pass alone on
    device-resident inputs where it can (``capabilities.device_infer``: the CUDA engines and the
    CUDA baseline), so the GPU engines and the GPU baseline are timed alike."""
    if runner.capabilities.device_infer:
        import torch

        device_batch = torch.from_numpy(batch).to(runner.device)
        return lambda: runner.infer_on_device(device_batch)
    return lambda: runner.infer(batch, need_logits=False)


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


def _gpu_timed(runner: Runner, call, cuda: bool):
    """``call`` returning its GPU milliseconds too (None off the GPU): the runner's events where it
    keeps them, else events on the current stream around the call."""
    if not cuda:
        return lambda: (call(), None)
    if hasattr(runner, "last_gpu_ms"):
        return lambda: (call(), runner.last_gpu_ms)
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed():
        start.record()
        call()
        end.record()
        end.synchronize()
        return None, start.elapsed_time(end)

    return timed


def _worker_main(conn, contender: Contender, threads: int | None, sizes: list[tuple[int, int]], batch: int, warmup: int) -> None:
    """A worker process: open one engine, warm it up, then time blocks on request."""
    from ..backends import open_runner

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    try:
        cuda = contender.device == "cuda"
        if cuda or is_checkpoint(contender.path):  # only torch's runners import torch here
            import torch

            if threads:
                torch.set_num_threads(threads)
            cuda = cuda and torch.cuda.is_available()
            if cuda:  # torch's cuDNN default is TF32: FP32 means TF32 off, TF32 is a row of its own
                torch.backends.cuda.matmul.allow_tf32 = contender.tf32
                torch.backends.cudnn.allow_tf32 = contender.tf32
        used = (lambda: torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]) if cuda else _rss_bytes
        before = used()
        peak_tracked = not cuda and _reset_peak_rss()
        runner = open_runner(contender.path, threads=threads, device=contender.device)
        graph = bool(contender.cuda_graph and cuda and hasattr(runner, "use_cuda_graph"))
        if graph:
            runner.use_cuda_graph()
        calls = {}
        peak = used()
        for h, w in sizes:
            runner.profile.check(batch, h, w)
            calls[(h, w)] = _gpu_timed(runner, infer_call(runner, scene_batch(h, w, batch, runner.meta)), cuda and runner.device == "cuda")
            for _ in range(max(1, warmup)):
                calls[(h, w)]()
                peak = max(peak, used())
        grown = max(peak, (_peak_rss_bytes() or 0) if peak_tracked else 0) - before
        tf32 = bool(cuda and contender.tf32)
        fallback = None
        if contender.device != "cpu" and runner.device != contender.device:  # e.g. ORT's CUDA provider absent from the session
            providers = ", ".join(getattr(runner, "providers", None) or ["?"])
            fallback = f"asked to run on {contender.device}, its session runs on {runner.device} (providers: {providers})"
        conn.send(("ready", {
            "backend": runner.backend, "precision": "tf32" if tf32 else runner.precision, "device": runner.device,
            "arithmetic": "tf32" if tf32 else runner.arithmetic, "pid": os.getpid(), "tf32": tf32, "cuda_graph": graph,
            "opt": list(runner.profile.opt), "tuned_at_opt": bool(getattr(runner, "tuned_at_opt", False)), "device_fallback": fallback,
            "peak_memory_mb": grown / 1e6, "memory_kind": "cuda_device_memory" if cuda else "peak_rss_growth",
        }))  # fmt: skip
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            _, size, count = message
            call = calls[tuple(size)]
            call()  # untimed: caches and thread pools wake up
            samples, gpu = [], []
            for _ in range(count):
                start = time.perf_counter()
                _, gpu_ms = call()
                samples.append((time.perf_counter() - start) * 1000.0)
                gpu.append(gpu_ms)
            conn.send(("samples", {"wall": samples, "gpu": gpu if None not in gpu else None}))
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
    contenders: list[Contender], sizes: list[tuple[int, int]], *, batch: int = 1, warmup: int = 3, iters: int = 20,
    threads: int | None = None, listener: Listener = SILENT,
) -> list[tuple[dict[str, Any], dict[tuple[int, int], list[float]]]]:  # fmt: skip
    """Time every contender in its own worker process, in interleaved rounds of blocks.

    Returns, per contender, its info (backend, precision, device, memory) and its samples (ms) per
    size.  Progress: the task ``benchmark-load`` (one step per loaded engine), then ``benchmark``
    (one step per timed run).
    """
    check_runs(warmup, iters)
    workers: list[_Worker] = []
    started: list[str] = []
    try:
        listener.start("benchmark-load", total=len(contenders), description="loading engines in their worker processes", unit="engines")
        started.append("benchmark-load")
        # host engines load side by side; CUDA ones one at a time (device memory is measured GPU-wide)
        order = [i for i, c in enumerate(contenders) if c.device != "cuda"] + [i for i, c in enumerate(contenders) if c.device == "cuda"]
        loaded: dict[int, _Worker] = {}
        for position, index in enumerate(order):
            loaded[index] = _Worker(contenders[index], threads, sizes, batch, warmup)
            workers.append(loaded[index])
            if position == len(order) - 1 or "cuda" in (contenders[index].device, contenders[order[position + 1]].device):
                for worker in [w for w in loaded.values() if not w.info]:
                    worker.info = worker.receive("ready")
                    listener.advance("benchmark-load")
        workers = [loaded[i] for i in range(len(contenders))]
        listener.finish(started.pop())
        samples = {(i, size): [] for i in range(len(workers)) for size in sizes}
        listener.start("benchmark", total=len(samples) * iters, description="timing", unit="runs")
        started.append("benchmark")
        while any(len(s) < iters for s in samples.values()):
            for (i, size), got in samples.items():
                count = min(BLOCK, iters - len(got))
                if count <= 0:
                    continue
                time.sleep(SETTLE_S)
                workers[i].conn.send(("block", size, count))
                block = workers[i].receive("samples")
                got.extend(block["wall"])
                gpu = workers[i].info.setdefault("gpu_samples_ms", {})
                if block["gpu"] is not None:
                    gpu.setdefault(size, []).extend(block["gpu"])
                listener.advance("benchmark", count)
        return [(w.info, {size: samples[(i, size)] for size in sizes}) for i, w in enumerate(workers)]
    finally:
        for task in started:
            listener.finish(task)
        for worker in workers:
            worker.close()
