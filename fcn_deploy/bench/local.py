"""benchmark: latency, throughput and memory of engines against PyTorch eager FP32, in one run.

Speed targets are only meaningful as ratios measured side by side, so every run times the baseline
(the PyTorch checkpoint, eager, FP32, on each device an engine runs on) next to each engine, with
the same inputs, warm-up and thread count, each in its own worker process (:mod:`.workers`), and
reports medians, the p10-p90 spread and speedups.

Per engine and size it also reports the worker's peak memory and the achieved fraction of the
machine's peak: the model's FLOPs at that size (:mod:`.flops`, counted on the PyTorch model) per
second, over the peak of the same device and thread count (:mod:`.peaks`).  An adopted model has
no PyTorch model: its engines are timed alone, without a baseline or FLOP counts.

On a GPU each row also has the GPU time (``gpu_median_ms``, from CUDA events) next to the host's
wall time (``median_ms``), the PyTorch baseline has a TF32 row of its own (the baseline is FP32 with
TF32 off), and a row says so (``notes``) when its engine was tuned at an opt shape far from the
size it was timed at, or when it asked for the GPU and its session runs on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends
from ..artefacts import CHECKPOINT_SUFFIXES, Kind, has_manifest, is_checkpoint, kind_of
from ..backends import read_manifest
from ..errors import FcnDeployError, require_file
from ..events import SILENT, Listener
from ..fileio import sha256_file
from .flops import count_flops
from .peaks import FLOP_COUNT, PeakProcess, peak_kind, strongest
from .workers import BLOCK, SETTLE_S, Contender, check_runs, time_contenders


def summarise(samples_ms: list[float]) -> dict[str, float]:
    """Median and spread (p10, p90, min, max, mean) of timed runs, in milliseconds."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(arr)), "p10_ms": float(np.percentile(arr, 10)), "p90_ms": float(np.percentile(arr, 90)),
        "min_ms": float(arr.min()), "max_ms": float(arr.max()), "mean_ms": float(arr.mean()),
    }  # fmt: skip


def find_reference(engine: str | Path) -> Path | None:
    """The checkpoint an engine came from: the checkpoint named after its source ONNX, beside it
    (export names the ONNX after its checkpoint), else one named after the engine's first name part."""
    engine = Path(engine)
    bases = []
    if has_manifest(engine) and read_manifest(engine).get("source_onnx"):
        bases.append(Path(read_manifest(engine)["source_onnx"]).with_suffix(""))
    bases.append(engine.with_name(engine.name.split(".")[0]))
    candidates = [base.with_name(base.name + suffix) for base in bases for suffix in CHECKPOINT_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def _adopted(path: Path, kind: Kind) -> bool:
    """Whether ``path`` (an engine or an ONNX) comes from `fcn-deploy adopt`, which has no checkpoint."""
    if kind is Kind.ENGINE:
        return bool(read_manifest(path).get("meta", {}).get("adopted"))
    if kind is Kind.ONNX:
        from ..meta import ONNX_META_KEY, read_onnx_props
        from ..onnxkit import read_onnx

        props = read_onnx_props(read_onnx(path, load_data=False))
        return ONNX_META_KEY in props and bool(json.loads(props[ONNX_META_KEY]).get("adopted"))
    return False


def _engine_device(path: Path, kind: Kind) -> str:
    """Where an engine runs, as its backend reads its manifest (plain ONNX and checkpoints: the CPU)."""
    if kind is Kind.ENGINE:
        manifest = read_manifest(path)
        return backends.engine_backend(path, manifest).engine_device(manifest)
    return "cpu"


def _checked_reference(reference: str | Path) -> Path:
    reference = require_file(reference, "reference checkpoint")
    if not is_checkpoint(reference):
        raise FcnDeployError(
            f"{reference}: the baseline is PyTorch eager, from a checkpoint (.pt); leave the reference out to time the engines alone",
            options=("reference",),
        )
    return reference


def run_benchmark(
    engines: list[Path],
    *,
    reference: Path | None = None,
    sizes: list[tuple[int, int]] | None = None,
    batch: int = 1,
    warmup: int = 3,
    iters: int = 20,
    threads: int | None = None,
    cuda_graph: bool = False,
    listener: Listener = SILENT,
) -> dict[str, Any]:
    """Time the PyTorch baseline and every engine at every size; return the report dict.

    ``reference`` is the baseline's checkpoint (default: the one the first engine was exported
    from, found beside its source ONNX; none for an adopted model).  ``results`` holds one row
    per contender and size; the baseline's rows carry ``baseline: True``.  ``cuda_graph``: GPU
    engines that can replay a CUDA graph per shape do (trtexec's ``--useCudaGraph``).
    """
    import torch

    from ..checkpoint import load_checkpoint

    sizes = list(sizes or [(512, 512)])
    if not engines:
        raise FcnDeployError("give at least one engine or ONNX file to benchmark")
    check_runs(warmup, iters)
    if batch < 1:
        raise FcnDeployError(f"batch must be at least 1, not {batch}", options=("batch",))
    engines = [Path(e) for e in engines]
    kinds = [kind_of(e, "engine") for e in engines]
    if threads:
        torch.set_num_threads(threads)
    reference = _checked_reference(reference) if reference is not None else find_reference(engines[0])
    if reference is None and not _adopted(engines[0], kinds[0]):
        raise FcnDeployError(
            f"no PyTorch checkpoint found for the baseline of {engines[0]}; give the checkpoint it was exported from as the reference",
            options=("reference",),
        )
    engine_devices = [_engine_device(p, k) for p, k in zip(engines, kinds)]
    devices = list(dict.fromkeys(["cpu", *engine_devices]))  # the baseline runs on the CPU and on each engine's device
    contenders = [Contender(str(p), str(p), d, cuda_graph=cuda_graph and d == "cuda") for p, d in zip(engines, engine_devices)]
    flops_at: dict[tuple[int, int], float | None] = dict.fromkeys(sizes)
    if reference is None:  # an adopted ONNX has no PyTorch model to time or count FLOPs on
        listener.note(f"{engines[0]} was adopted from a foreign ONNX and has no PyTorch checkpoint: "
                      "timing the engines alone, without a PyTorch baseline or FLOP counts", level="warning")  # fmt: skip
    else:
        ckpt = load_checkpoint(reference)
        contenders = [Contender(f"torch-eager ({reference.name})", str(reference), d, baseline=True) for d in devices] + contenders
        if "cuda" in devices:  # the baseline is FP32 with TF32 off; TF32 (torch's cuDNN default) is labelled apart
            contenders.insert(len(devices), Contender(f"torch-eager-tf32 ({reference.name})", str(reference), "cuda", tf32=True))
        reference_model = ckpt.build_model()
        flops_at = {(h, w): count_flops(reference_model, h, w, batch) for h, w in sizes}
        del reference_model
    listener.note(
        f"benchmark: {len(engines)} engine(s){' + PyTorch eager baseline' if reference else ''} at {sizes}, batch {batch}, {warmup} warm-up + "
        f"{iters} timed runs each, every engine in its own process, interleaved in blocks of {BLOCK}; "
        f"threads: {threads or 'each runtime default'}"
    )
    listener.note("measuring the attainable peaks (each runtime's own matrix multiply, FP32 and int8) in a process of their own, "
                  "before and after the engines (the best of both)")  # fmt: skip
    with contextlib.ExitStack() as stack:
        probes = {dev: stack.enter_context(PeakProcess(dev, threads)) for dev in devices}
        before = {dev: probe.measure() for dev, probe in probes.items()}
        timed = time_contenders(contenders, sizes, batch=batch, warmup=warmup, iters=iters, threads=threads, listener=listener)
        peaks = {dev: strongest(before[dev], probe.measure()) for dev, probe in probes.items()}
    machine = {
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "peaks": {dev: {kind: peak.to_dict() for kind, peak in found.items()} for dev, found in peaks.items()},
        "flop_count": FLOP_COUNT,
    }
    baselines = {
        (info["device"], size): float(np.median(samples[size]))
        for contender, (info, samples) in zip(contenders, timed) if contender.baseline for size in sizes
    }  # fmt: skip
    results = []
    for contender, (info, samples) in zip(contenders, timed):
        for h, w in sizes:
            stats = summarise(samples[(h, w)])
            gpu_samples = info.get("gpu_samples_ms", {}).get((h, w))
            gpu = summarise(gpu_samples) if gpu_samples else {}
            base = baselines.get((info["device"], (h, w)))
            flops = flops_at[(h, w)]
            gflops = flops / (stats["median_ms"] / 1000) / 1e9 if flops else None
            kind = peak_kind(info.get("arithmetic", info["precision"]), peaks[info["device"]])
            peak = peaks[info["device"]].get(kind)
            fraction = gflops / peak.gops if gflops and peak else None
            results.append({
                "engine": contender.label, "label": f"{info['backend']}-{info['precision']}", "backend": info["backend"],
                "precision": info["precision"], "device": info["device"], "baseline": contender.baseline,
                "height": h, "width": w, "batch": batch,
                **stats, "throughput_fps": batch * 1000.0 / stats["median_ms"],
                "speedup_vs_torch": (base / stats["median_ms"]) if base else None,
                "peak_memory_mb": info["peak_memory_mb"], "memory_kind": info["memory_kind"],
                "gflop": flops / 1e9 if flops else None, "achieved_gflops": gflops,
                "arithmetic": info.get("arithmetic"), "peak_kind": kind, "peak_gops": peak.gops if peak else None,
                "peak_source": peak.source if peak else None, "fraction_of_peak": fraction,
                "above_peak": bool(fraction and fraction > 1.0), "samples_ms": samples[(h, w)],
                "worker_pid": info["pid"],
                "gpu_median_ms": gpu.get("median_ms"), "gpu_p10_ms": gpu.get("p10_ms"), "gpu_p90_ms": gpu.get("p90_ms"),
                "gpu_samples_ms": gpu_samples, "tf32": info.get("tf32", False), "cuda_graph": info.get("cuda_graph", False),
                "opt": info.get("opt"), "notes": row_notes(info, batch, h, w),
            })  # fmt: skip
    for note in dict.fromkeys(f"{Path(r['engine']).name}: {n}" for r in results for n in r["notes"]):
        listener.note(note, level="warning")
    for row in results:
        if row["above_peak"]:  # a measurement or labelling bug: no engine outruns the kernel its arithmetic runs on
            listener.note(f"{row['label']} at {row['height']}x{row['width']} ran at {row['fraction_of_peak']:.0%} of its {row['peak_kind']} "
                          f"peak ({row['peak_source']}): the peak or the FLOP count is wrong", level="error")  # fmt: skip
    base_info = next((info for contender, (info, _) in zip(contenders, timed) if contender.baseline), None)
    return {
        "results": results,
        "baseline": {"backend": base_info["backend"], "precision": base_info["precision"], "mode": "eager",
                     "checkpoint": str(reference), "checkpoint_sha256": sha256_file(reference)} if base_info else None,
        "machine": machine,
        "settings": {"warmup": warmup, "iters": iters, "batch": batch, "sizes": [list(s) for s in sizes],
                     "isolation": "one worker process per engine",
                     "order": f"interleaved blocks of {BLOCK}, {SETTLE_S * 1000:.0f} ms settle + 1 untimed call before each"},
    }  # fmt: skip


#: How far (in pixels per batch, either way) a timed size may be from the engine's opt before the row says so.
FAR_FROM_OPT = 2.0


def row_notes(info: dict[str, Any], batch: int, height: int, width: int) -> list[str]:
    """What a row's reader must know: an engine tuned at an opt shape far from this size, a GPU run
    that fell back to the CPU."""
    notes = []
    opt = info.get("opt")
    if info.get("tuned_at_opt") and opt:
        n, oh, ow = opt
        factor = (batch * height * width) / max(1, n * oh * ow)
        if factor > FAR_FROM_OPT or factor < 1 / FAR_FROM_OPT:
            notes.append(f"timed at {batch}x{height}x{width}, far from the {n}x{oh}x{ow} its {info['backend']} engine was tuned at "
                         "(its opt shape): rebuild it with that opt shape to time it where it runs")  # fmt: skip
    if info.get("device_fallback"):
        notes.append(f"{info['device_fallback']}: this row is a CPU figure")
    return notes


def ratio(results: list[dict], numerator: str, denominator: str, size: tuple[int, int] | None = None) -> float | None:
    """How many times faster ``numerator`` (a ``label`` such as ``openvino-int8``; the baseline is
    ``torch-fp32``) ran than ``denominator``, by median latency, at ``size`` (default: the first
    size measured).  Where two rows share a label (the baseline on two devices), the first counts."""
    picked = {}
    for r in results:
        if size is None or (r["height"], r["width"]) == tuple(size):
            size = size or (r["height"], r["width"])
            picked.setdefault(r["label"], r["median_ms"])
    if numerator not in picked or denominator not in picked:
        return None
    return picked[denominator] / picked[numerator]
