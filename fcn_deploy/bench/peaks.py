"""The machine's attainable peaks: the denominators of the benchmark's "% of peak".

An engine is held against the peak of the arithmetic it computes in (``Runner.arithmetic``):
INT8 engines against an int8 GEMM, FP16 engines against an FP16 GEMM where the device has FP16
arithmetic, everything else (FP32, and FP16 graphs computed in FP32) against FP32.  Each peak is the
best of the installed runtimes' own matrix-multiply kernels, on the same device and thread count
as the engines: ``torch.mm`` alone is not attainable (MKL takes a slow path on some CPUs, where ONNX
Runtime's and OpenVINO's MatMul run twice as fast), and an FP32 peak says nothing about int8
dot-product units.  The peaks are measured in a process of their own, like every engine, so no
runtime's spinning threads slow another's, before and after the engines (:class:`PeakProcess`,
:func:`strongest`).

Each kernel runs at a few square sizes and its best counts: no one size is every kernel's best
(on a 2-core CPU, 1536 or 1024 beat 2048 by 5-10 %, where a GPU needs larger products to fill).
An ``n x n x n`` product is ``2 * n**3`` operations (a multiply-add counts two).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: The square product sizes each kernel runs at, per device kind.
SIZES = {"cpu": (1024, 1536, 2048), "cuda": (2048, 4096, 8192)}
REPEATS = 4  # per measurement; the benchmark measures twice and keeps the best
#: What the engines' operation counts are, as the report states it.
FLOP_COUNT = "the model's direct-convolution multiply-adds x 2 (conv and deconv layers, counted on the PyTorch model)"


@dataclass
class Peak:
    kind: str  # "fp32" | "int8" | "fp16"
    gops: float  # 1e9 operations per second
    source: str  # which runtime's kernel reached it
    candidates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _best_seconds(run: Callable[[], Any], repeats: int = REPEATS) -> float:
    run()  # warm-up: caches, thread pools, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _matmul_graph(int8: bool, n: int):
    """``Y = A @ B`` as ONNX: float32, or int8 through Q/DQ (uint8 activations, int8 weights), as the INT8 graphs are."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if int8:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"), numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
                  numpy_helper.from_array(rng.integers(-127, 128, (n, n)).astype(np.int8), "b_q"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "b_scale"), numpy_helper.from_array(np.array(0, np.int8), "b_zero")]  # fmt: skip
        nodes += [helper.make_node("QuantizeLinear", ["a", "a_scale", "a_zero"], ["a_q"]),
                  helper.make_node("DequantizeLinear", ["a_q", "a_scale", "a_zero"], ["a_dq"]),
                  helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"]),
                  helper.make_node("MatMul", ["a_dq", "b"], ["y"])]  # fmt: skip
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "b"))
        nodes.append(helper.make_node("MatMul", ["a", "b"], ["y"]))
    graph = helper.make_graph(nodes, "peak", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


@functools.cache
def _onnxruntime_run(int8: bool, n: int, threads: int | None) -> Callable[[], Any]:
    """The product as a call, kept for the next measurement of this process (no second compile)."""
    import numpy as np

    from ..onnxkit import create_session

    session = create_session(_matmul_graph(int8, n).SerializeToString(), where="the peak MatMul", threads=threads)
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    return lambda: session.run(None, {"a": a})


def _onnxruntime(int8: bool, n: int, threads: int | None) -> float:
    return _best_seconds(_onnxruntime_run(int8, n, threads))


@functools.cache
def _openvino_run(int8: bool, n: int, threads: int | None) -> Callable[[], Any]:
    import tempfile
    from pathlib import Path

    import numpy as np
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "peak.onnx")
        path.write_bytes(_matmul_graph(int8, n).SerializeToString())
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            **({"INFERENCE_NUM_THREADS": str(threads)} if threads else {}),
        }
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    return lambda: request.infer({0: a}, share_inputs=True)


def _openvino(int8: bool, n: int, threads: int | None) -> float:
    return _best_seconds(_openvino_run(int8, n, threads))


def _torch(kind: str, n: int, threads: int | None, device: str) -> float:
    import torch

    if threads and device == "cpu":
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if kind == "int8":
        a = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=dev)
        b = torch.randint(-127, 127, (n, n), dtype=torch.int8, device=dev)
        op = lambda: torch._int_mm(a, b)  # noqa: E731
    else:
        dtype = torch.float16 if kind == "fp16" else torch.float32
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        op = lambda: torch.mm(a, b)  # noqa: E731
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32, as the engines are built

        def run():
            op()
            torch.cuda.synchronize(dev)

        return _best_seconds(run)
    return _best_seconds(op)


def _has_fp16_arithmetic(device: str) -> bool:
    if device == "cuda":
        return True
    from ..machine import cpu_info

    return bool({"avx512_fp16", "amx_fp16"} & set(cpu_info()["isa"]))


def _measure(device: str, threads: int | None, sizes: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Every candidate of every kind at every size, in this process; ``{kind: Peak as a dict}``."""
    candidates: dict[str, dict[str, tuple[float, int]]] = {"fp32": {}, "int8": {}, "fp16": {}}

    def attempt(kind: str, name: str, seconds: Callable[[int], float]) -> None:
        for n in sizes:
            try:
                gops = 2.0 * n**3 / seconds(n) / 1e9
            except Exception:  # noqa: BLE001 - a runtime that is missing or cannot run this kernel is simply not a candidate
                continue
            if gops > candidates[kind].get(name, (0.0, 0))[0]:
                candidates[kind][name] = (gops, n)

    if device == "cpu":
        for kind, int8 in (("fp32", False), ("int8", True)):
            attempt(kind, "onnxruntime MatMul", lambda n, int8=int8: _onnxruntime(int8, n, threads))
            attempt(kind, "openvino MatMul", lambda n, int8=int8: _openvino(int8, n, threads))
    attempt("fp32", "torch.mm", lambda n: _torch("fp32", n, threads, device))
    if device == "cuda":
        attempt("int8", "torch._int_mm", lambda n: _torch("int8", n, threads, device))
    if _has_fp16_arithmetic(device):
        attempt("fp16", "torch.mm float16", lambda n: _torch("fp16", n, threads, device))
    if device == "cuda":  # the process stays up while the engines run: hand its cached blocks back
        import torch

        torch.cuda.empty_cache()
    peaks = {}
    for kind, found in candidates.items():
        if found:
            best = max(found, key=lambda name: found[name][0])
            gops, n = found[best]
            where = f"{best}, {n}x{n}x{n}, {threads or 'default'} threads" if device == "cpu" else f"{best} on the GPU, {n}x{n}x{n}"
            peaks[kind] = Peak(kind, gops, where, {name: value for name, (value, _) in found.items()}).to_dict()
    return peaks


def _child(conn, device: str, threads: int | None, sizes: tuple[int, ...]) -> None:
    """Measure on each request until told to stop: the runtimes load and warm up once."""
    while conn.recv() == "measure":
        try:
            conn.send(("ok", _measure(device, threads, sizes)))
        except BaseException as exc:  # noqa: BLE001 - reported by the parent
            conn.send(("error", f"{exc.__class__.__name__}: {exc}"))
            return


class PeakProcess:
    """The peaks of ``device``, measured in a process of its own each time :meth:`measure` is
    called (the benchmark measures before and after the engines, and pays the runtimes' start-up,
    several seconds with torch, once)."""

    def __init__(self, device: str = "cpu", threads: int | None = None, sizes: tuple[int, ...] | None = None):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        sizes = sizes or SIZES.get(device, SIZES["cpu"])
        self._process = ctx.Process(target=_child, args=(child, device, threads, sizes), daemon=True, name="fcn-deploy-bench-peaks")
        self._process.start()
        child.close()

    def measure(self) -> dict[str, Peak]:
        """``{"fp32": Peak, "int8": Peak, ("fp16": Peak)}``."""
        try:
            self._conn.send("measure")
            status, payload = self._conn.recv()
        except (EOFError, BrokenPipeError, OSError):
            status, payload = "error", f"the peak process died (exit code {self._process.exitcode})"
        if status != "ok":
            raise RuntimeError(f"measuring the peaks failed: {payload}")
        return {kind: Peak(**data) for kind, data in payload.items()}

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send("close")
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()

    def __enter__(self) -> PeakProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_peaks(device: str = "cpu", threads: int | None = None, sizes: tuple[int, ...] | None = None) -> dict[str, Peak]:
    """The peaks of ``device`` measured once, in a process of its own."""
    with PeakProcess(device, threads, sizes) as probe:
        return probe.measure()


def strongest(*measurements: dict[str, Peak]) -> dict[str, Peak]:
    """Each kind's best over several measurements of the peaks, each candidate kept at its best.

    A peak is what the machine can attain; on a shared machine a neighbour can hold down one
    measurement for its whole second, and the engines timed beside a better moment would then read
    above 100 %.  So the benchmark measures before and after the engines and keeps the best."""
    merged: dict[str, Peak] = {}
    for found in measurements:
        for kind, peak in found.items():
            held = merged.get(kind)
            candidates = dict(held.candidates) if held else {}
            for name, gops in peak.candidates.items():
                candidates[name] = max(gops, candidates.get(name, 0.0))
            best = peak if held is None or peak.gops > held.gops else held
            merged[kind] = Peak(kind, best.gops, best.source, candidates)
    return merged


def peak_kind(arithmetic: str, peaks: dict[str, Peak]) -> str:
    """Which peak an engine computing in ``arithmetic`` is held against."""
    if arithmetic == "int8" and "int8" in peaks:
        return "int8"
    if arithmetic == "fp16" and "fp16" in peaks:
        return "fp16"
    return "fp32"
