"""Facts about this machine that engines depend on: the CPU model and its instruction-set flags."""

from __future__ import annotations

import functools
import os
import platform

#: The ISA extensions that decide which kernels CPU runtimes pick (int8 dot products, bf16, fp16).
RELEVANT_ISA = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "asimd", "asimddp", "sve",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, object]:
    """``{"cpu": model name, "cpu_count": n, "isa": [relevant flags]}`` (Linux reads /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": name, "cpu_count": os.cpu_count(), "isa": [f for f in RELEVANT_ISA if f in flags]}
