"""benchmark --server: throughput and latency of a served model under concurrency, as perf_analyzer measures.

For each image size and concurrency level ``C``, ``C`` client threads, each with its own gRPC
connection (as ``C`` independent cameras or services would have), send one image per request
back to back: ``warmup`` untimed requests each, then ``iters`` timed ones each, all starting
together.  Reported per level: requests per second (completed requests over the wall time from the
common start to the last response), latency percentiles p50/p90/p99 as the client sees them
(request serialisation, network, queueing, batching, inference, response), and, from Triton's
statistics API, what the server did meanwhile: images per engine execution (the dynamic batcher at
work), the average time a request queued, and the average duration of the execution it ran in.

The client shares the machine with the server when both run on one host; its threads then take
CPU from the engine, as perf_analyzer's do, and each row says how much (``client_cpu_ms_per_request``).
Run it from another machine to measure the server alone.

Given the served engine as well (``benchmark --server ADDRESS ENGINE``), the engine alone is timed
in this process too (:class:`EngineAlone`), while the server idles.  Each row then says what
serving costs: ``overhead`` is the p50 latency over the engine's median, less one, and
``vs_engine`` the throughput over the engine's own (1000 / its median ms).  Both are same-run
ratios on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.remote import DEFAULT_MODEL, INPUT, OUTPUT, REQUEST_TIMEOUT_S, TritonModel, server_message
from ..backends.remote_shm import SharedMemoryPool
from ..data.synthetic import make_scene
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from .local import summarise
from .workers import BENCH_SEED, check_runs, infer_call, scene_batch

#: Seconds the server is left idle before the engine is timed alone (its threads wind down).
SETTLE_S = 1.0
#: Distinct images each client cycles through (so no cache or identical payload flatters the server).
IMAGES_PER_SIZE = 4


def parse_concurrency(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``: the concurrency levels, each a client count of at least 1."""
    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FcnDeployError(f"{text!r}: give comma-separated client counts, e.g. 1,4,16", options=("concurrency",)) from None
    _check_levels(levels, text)
    return levels


def _check_levels(levels: list[int], text: object) -> None:
    if not levels or min(levels) < 1:
        raise FcnDeployError(f"{text!r}: give comma-separated client counts of at least 1, e.g. 1,4,16", options=("concurrency",))


def _client_loop(address: str, model: str, images: list[np.ndarray], warmup: int, iters: int, start: threading.Barrier,
                 latencies: list[float], errors: list[str], finished: list[float], mask_dtype: type | None,
                 transports: list[str]) -> None:  # fmt: skip
    """One client: its own connection, ``warmup`` untimed then ``iters`` timed requests; through its
    own shared-memory regions where ``mask_dtype`` is given and the server takes this user's token."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(address)
    pool = SharedMemoryPool.open(client, address) if mask_dtype is not None else None
    try:
        batches = [image[None] for image in images]
        pair = pool.acquire(batches[0].nbytes, pool.mask_bytes(batches[0], mask_dtype)) if pool else None
        inputs = []
        for batch in batches:
            tensor = grpcclient.InferInput(INPUT, list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            inputs.append([tensor])
        outputs = [grpcclient.InferRequestedOutput(OUTPUT)]

        def send(i: int) -> None:
            if pair is None:  # the image in the request, the mask in the response
                client.infer(model, inputs[i % len(inputs)], outputs=outputs, client_timeout=REQUEST_TIMEOUT_S)
                return
            batch = batches[i % len(batches)]  # the image copied into the region, the mask out of it, as a camera's client would
            shared_inputs, shared_outputs = pool.request(grpcclient, pair, batch, mask_dtype, INPUT, OUTPUT)
            client.infer(model, shared_inputs, outputs=shared_outputs, client_timeout=REQUEST_TIMEOUT_S)
            pool.masks(pair, batch, mask_dtype)

        for i in range(warmup):
            send(i)
        start.wait()  # every client is warm: the caller reads the server's counters
        start.wait()  # and starts the clock
        for i in range(iters):
            began = time.perf_counter()
            send(i)
            latencies.append((time.perf_counter() - began) * 1000.0)
        finished.append(time.perf_counter())
        transports.append("system shared memory" if pool else "gRPC")
    except Exception as exc:  # noqa: BLE001 - reported by the caller, with the level
        errors.append(server_message(exc))
        start.abort()
    finally:
        if pool:
            pool.close()
        client.close()


def measure_level(remote: TritonModel, size: tuple[int, int], concurrency: int, warmup: int, iters: int,
                  shared_memory: bool = True) -> dict[str, Any]:  # fmt: skip
    """One concurrency level at one size: the figures of a result row."""
    height, width = size
    images = [make_scene(BENCH_SEED, i, height, width)[0] for i in range(IMAGES_PER_SIZE)]
    latencies: list[float] = []
    errors: list[str] = []
    finished: list[float] = []
    transports: list[str] = []
    dtype = remote.mask_dtype if shared_memory else None
    barrier = threading.Barrier(concurrency + 1)
    threads = [
        threading.Thread(
            target=_client_loop, args=(remote.address, remote.model, images, warmup, iters, barrier, latencies, errors, finished, dtype, transports),
            name=f"fcn-deploy-client-{i}", daemon=True,
        )
        for i in range(concurrency)
    ]  # fmt: skip
    for thread in threads:
        thread.start()
    before: dict[str, int] = {}
    began, cpu_began = time.perf_counter(), time.process_time()
    try:
        barrier.wait()
        before = remote.statistics()
        cpu_began = time.process_time()
        barrier.wait()
        began = time.perf_counter()
    except threading.BrokenBarrierError:  # a client failed; it says why below
        pass
    for thread in threads:
        thread.join()
    client_cpu_s = time.process_time() - cpu_began
    after = remote.statistics()
    if errors:
        raise FcnDeployError(
            f"{remote.url}: {len(errors)} of {concurrency} clients failed at concurrency {concurrency}, {height}x{width}: {errors[0]}"
        )
    wall = max(finished) - began
    arr = np.asarray(latencies)
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    executions, inferences, successes = delta.get("execution_count", 0), delta.get("inference_count", 0), delta.get("success_count", 0)
    return {
        "concurrency": concurrency, "height": height, "width": width, "batch": 1, "requests": len(latencies), "wall_s": wall,
        "throughput_rps": len(latencies) / wall, "throughput_fps": len(latencies) / wall,
        "median_ms": float(np.percentile(arr, 50)), "p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean()), "min_ms": float(arr.min()), "max_ms": float(arr.max()),
        "transport": transports[0] if len(set(transports)) == 1 else "mixed",
        "server_avg_batch": inferences / executions if executions else None,
        # the CPU the clients themselves took (gRPC, serialisation), which a shared host takes from the server
        "client_cpu_ms_per_request": client_cpu_s * 1000.0 / max(len(latencies), 1),
        "server_queue_ms": delta.get("queue_ns", 0) / successes / 1e6 if successes else None,
        # Triton charges each request its execution's compute time: per request, the average execution's duration
        "server_compute_ms": delta.get("compute_infer_ns", 0) / successes / 1e6 if successes else None,
    }  # fmt: skip


class EngineAlone:
    """The served engine, timed in this process as ``benchmark`` times engines (one preprocessed
    image in, the mask out), in a block of runs before each concurrency level and after the last,
    while the server idles; a level is compared with the blocks on either side of it, so a machine
    whose speed drifts (a shared host, a turbo clock) weighs on both figures alike."""

    def __init__(self, engine: str | Path, threads: int | None, warmup: int, iters: int):
        from ..backends import open_runner

        self.runner = open_runner(engine, threads=threads)
        self.warmup, self.iters = max(warmup, 1), max(iters, 10)
        self.blocks: dict[tuple[int, int], list[list[float]]] = {}

    def block(self, size: tuple[int, int]) -> None:
        time.sleep(SETTLE_S)
        call = infer_call(self.runner, scene_batch(*size, 1, self.runner.meta))
        for _ in range(self.warmup):
            call()
        samples = []
        for _ in range(self.iters):
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1000.0)
        self.blocks.setdefault(size, []).append(samples)

    def around(self, size: tuple[int, int], index: int) -> float:
        """The median of the blocks before and after the ``index``-th level at ``size``."""
        blocks = self.blocks[size]
        return float(np.median(blocks[index] + blocks[index + 1]))

    def summary(self) -> list[dict[str, Any]]:
        return [{"height": h, "width": w, "backend": self.runner.backend, "precision": self.runner.precision, "blocks": len(blocks),
                 **summarise([v for block in blocks for v in block])} for (h, w), blocks in self.blocks.items()]  # fmt: skip

    def close(self) -> None:
        self.runner.close()


def run_server_benchmark(
    server: str,
    *,
    engine: str | Path | None = None,
    threads: int | None = None,
    model: str = DEFAULT_MODEL,
    concurrency: list[int] | None = None,
    sizes: list[tuple[int, int]] | None = None,
    warmup: int = 3,
    iters: int = 20,
    shared_memory: bool = True,
    listener: Listener = SILENT,
) -> dict[str, Any]:
    """Measure every size at every concurrency level; return the report (``results``: one row
    each).  ``shared_memory``: images and masks through system shared memory where the server
    takes this user's token (a client on its host), else over gRPC.  Progress: the task
    ``benchmark-server``, one step per size and level."""
    levels = list(concurrency or [1, 4, 16])
    sizes = list(sizes or [(512, 512)])
    check_runs(warmup, iters)
    _check_levels(levels, ",".join(map(str, levels)))
    alone: EngineAlone | None = None
    with TritonModel(server, model, shared_memory=shared_memory) as remote, contextlib.ExitStack() as stack:
        if engine is not None:
            if remote.engine and Path(engine).name != remote.engine:
                raise FcnDeployError(
                    f"{engine}: the server serves {remote.engine}, not this engine; give the served engine to compare with"
                )
            listener.note(f"benchmark: timing {Path(engine).name} alone too, in this process, before and after each level")
            alone = EngineAlone(engine, threads, warmup, iters)
            stack.callback(alone.close)
        listener.note(
            f"benchmark: {remote.describe()} at {', '.join(f'{h}x{w}' for h, w in sizes)}, concurrency {levels}: each client "
            f"{warmup} warm-up + {iters} timed requests of one image, back to back, through {remote.transport}"
        )
        results = []
        listener.start("benchmark-server", total=len(sizes) * len(levels), description="measuring", unit="levels")
        try:
            for size in sizes:
                for level in levels:
                    listener.advance("benchmark-server", 0, description=f"{size[0]}x{size[1]}, {level} client(s)")
                    if alone:
                        alone.block(size)
                    row = measure_level(remote, size, level, warmup, iters, shared_memory=remote.shared_memory is not None)
                    label = f"triton-{remote.backend}-{remote.precision}"
                    row.update(backend=remote.backend, precision=remote.precision, label=label)
                    results.append(row)
                    listener.advance("benchmark-server")
                if alone:
                    alone.block(size)
        finally:
            listener.finish("benchmark-server")
        for row in results:
            first = next(r for r in results if (r["height"], r["width"]) == (row["height"], row["width"]))
            row["throughput_vs_first_level"] = row["throughput_rps"] / first["throughput_rps"]
            size = (row["height"], row["width"])
            own = alone.around(size, levels.index(row["concurrency"])) if alone else None
            row["engine_ms"] = own
            row["overhead"] = row["p50_ms"] / own - 1.0 if own else None
            row["vs_engine"] = row["throughput_rps"] * own / 1000.0 if own else None
        return {
            "results": results,
            "server": {"url": remote.url, "backend": remote.backend, "precision": remote.precision, "engine": remote.engine,
                       "engine_sha256": remote.engine_sha256, "max_batch_size": remote.max_batch_size},
            "engine_alone": alone.summary() if alone else [],
            "client": {"cpu_count": os.cpu_count(), "connections": "one gRPC connection per client thread", "transport": remote.transport},
            "settings": {"concurrency": levels, "sizes": [list(s) for s in sizes], "warmup": warmup, "iters_per_client": iters,
                         "requests": "one image per request, sent back to back; latency measured at the client"},
        }  # fmt: skip
