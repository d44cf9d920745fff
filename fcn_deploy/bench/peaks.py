"""The machine's peak, the denominator of the benchmark's "% of peak".

Today one FP32 matmul through ``torch.mm`` per device: an attainable peak rather than a datasheet
one, but not every runtime's (MKL runs a slow path on some CPUs, and INT8 or FP16 engines compute
in other arithmetic), so engines can exceed 100 %.  The report says so in ``peak_kind``.
"""

from __future__ import annotations

import time

#: What the peak measures, as the report states it.
PEAK_KIND = "measured FP32 matmul (INT8/FP16 engines can exceed 100 %)"


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
