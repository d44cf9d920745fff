"""``infer --ray``: an archive segmented on a Ray cluster with Ray Data.

The pipeline: the inputs still to do (:func:`.batch.plan_run`) -> ``ray.data.from_items`` (paths
only: inputs are decoded inside the actors, so one corrupt file is a skipped row, not a failed
dataset, as ``read_images`` would make it) -> ``map_batches`` over a pool of :class:`SegmentActor`
(``concurrency`` actors, each with ``num_cpus`` / ``num_gpus``, ``task_inputs`` inputs per task) ->
rows streamed back to the driver, which reports progress and writes the results table.

* Each actor opens its engine once, from the files shipped through the object store
  (:mod:`.ray_engine`), through the manifest, with the hashes checked, and pins its runtime's
  threads to its CPUs: ONNX Runtime's and OpenVINO's defaults take every core of the node in
  every actor.
* Outputs are written by the actors (inputs and outputs must be on a filesystem every node sees),
  each under a temporary name and renamed whole.  An actor whose process dies is restarted
  (``max_restarts``) and its tasks resubmitted (``max_task_retries``): their outputs are written
  again, whole, to the same names, and each input still yields one row.  Temporaries a killed
  process left behind are swept at the end, so only complete files remain, after Ctrl-C too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FcnDeployError, optional_import
from ..events import SILENT, Listener
from .archive import ItemSettings, remove_stale_temporaries, segment_items
from .batch import Plan
from .ray_engine import Shipment, pack_engine, unpack_engine
from .sources import Item

INSTALL_HINT = "pip install 'fcn-deploy[ray]'"
#: Restarts of a dead actor, and resubmissions of its tasks, before the run fails.
MAX_RESTARTS = 4


def import_ray() -> Any:
    ray = optional_import("ray", INSTALL_HINT, what="Ray")
    optional_import("ray.data", INSTALL_HINT, what="Ray Data")
    return ray


class Tally:
    """A tiny actor the pool's actors report to: which engine each opened where, and restarts."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []

    def started(self, fact: dict[str, Any]) -> None:
        self.starts.append(fact)

    def report(self) -> list[dict[str, Any]]:
        return self.starts


class SegmentActor:
    """Holds one engine; each call segments one task's inputs and returns their rows (as JSON)."""

    def __init__(self, shipments: list, settings: ItemSettings, threads: int, tally: Any) -> None:
        import ray

        context = ray.get_runtime_context()
        node = context.get_node_id()
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:  # a checkpoint's runner; importing torch only for this would cost seconds per actor
            sys.modules["torch"].set_num_threads(threads)
        from ..backends import open_runner
        from .segmenter import Segmenter

        refused = []
        for shipment in ray.get(shipments[0]):
            try:
                self.segmenter = Segmenter(open_runner(unpack_engine(shipment, node), threads=threads), tile=settings.tile,
                                           tile_overlap=settings.tile_overlap)  # fmt: skip
                break
            except FcnDeployError as exc:
                refused.append(str(exc))
        else:
            raise FcnDeployError(f"no engine opens on node {node[:12]}: {' | '.join(refused)}")
        self.settings = settings
        fact = {"node": node, "pid": os.getpid(), "engine": shipment.engine, "label": self.segmenter.runner.label,
                "restarted": bool(context.was_current_actor_reconstructed), "threads": threads}  # fmt: skip
        ray.get(tally.started.remote(fact))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [Item(Path(str(p)), str(k), str(r)) for p, k, r in zip(batch["path"], batch["kind"], batch["rel"])]
        rows = segment_items(items, self.segmenter, self.settings)
        return {"row": np.array([json.dumps(row) for row in rows], dtype=object)}


def connect(ray: Any, address: str) -> bool:
    """Join ``address``, or start a local Ray for ``"local"``; says whether this run started it."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    try:
        if address == "local":
            ray.init(include_dashboard=False, **quiet)
            return True
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise FcnDeployError(
            f"cannot reach a Ray cluster at {address} ({str(exc).splitlines()[0]}); start one with `ray start --head`, or leave the "
            "address out to start a local Ray", options=("ray",),
        ) from exc  # fmt: skip
    return False


def default_actors(ray: Any, opts: Any, todo: int) -> int:
    resources = ray.cluster_resources()
    by_cpu = int(resources.get("CPU", 1) // opts.cpus_per_actor)
    by_gpu = int(resources.get("GPU", 0) // opts.gpus_per_actor) if opts.gpus_per_actor else by_cpu
    return max(1, min(by_cpu, by_gpu, math.ceil(todo / opts.task_inputs)))


def _quiet_data(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_ray(plan: Plan, engine: Path | list[Path] | None, settings: ItemSettings, opts: Any, *,
            listener: Listener = SILENT) -> tuple[list[dict[str, Any]], float, dict[str, Any]]:  # fmt: skip
    """Segment ``plan.todo`` on the cluster at ``opts.ray``; returns the rows, the wall time and
    the run's Ray facts (nodes, actors, restarts, the engine each node opened)."""
    if opts.server:
        raise FcnDeployError("run on a Ray cluster or on a Triton server, not both", options=("ray", "server"))
    engines = [Path(e) for e in ([engine] if isinstance(engine, (str, Path)) else engine or [])]
    if not engines:
        raise FcnDeployError("give an engine to run on Ray", options=("engine",))
    ray = import_ray()
    shipments: list[Shipment] = [pack_engine(path) for path in engines]
    started = connect(ray, opts.ray)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        _quiet_data(ray)
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        actors = opts.actors or default_actors(ray, opts, len(plan.todo))
        threads = max(1, int(opts.cpus_per_actor))
        facts = {"address": opts.ray, "nodes": len(nodes), "actors": actors, "cpus_per_actor": opts.cpus_per_actor,
                 "gpus_per_actor": opts.gpus_per_actor, "task_inputs": opts.task_inputs, "threads_per_actor": threads}  # fmt: skip
        listener.note(
            f"infer: {', '.join(plan.sources)} on Ray ({len(nodes)} node{'s' * (len(nodes) != 1)}, {actors} actor{'s' * (actors != 1)} "
            f"x {opts.cpus_per_actor:g} CPU{f' + {opts.gpus_per_actor:g} GPU' if opts.gpus_per_actor else ''}) with "
            f"{', '.join(path.name for path in engines)}, batch {settings.batch} -> {plan.out}"
        )
        if len(plan.todo) < len(plan.items):
            listener.note(f"{len(plan.items) - len(plan.todo)} of {len(plan.items)} inputs already complete in {plan.out}: skipping them")
        tally = ray.remote(num_cpus=0)(Tally).remote()
        if plan.todo:
            rows = _stream(ray, plan, settings, opts, listener, [ray.put(shipments)], threads, actors, tally)
        starts = ray.get(tally.report.remote())
        facts.update(
            retried=sum(1 for fact in starts if fact["restarted"]),
            engines_opened=sorted({(fact["node"][:12], fact["engine"], fact["label"]) for fact in starts}),
        )
    finally:
        if started:
            ray.shutdown()
        time.sleep(0.2 if started else 0.0)
        remove_stale_temporaries(plan.layout.masks, plan.layout.overlays)
    wall_s = time.perf_counter() - start
    return (
        rows,
        wall_s,
        {"ray": facts, "engine": str(engines[0]), "backend": facts["engines_opened"][0][2] if facts["engines_opened"] else None},
    )


def _stream(ray: Any, plan: Plan, settings: ItemSettings, opts: Any, listener: Listener, shipments: list, threads: int,
            actors: int, tally: Any) -> list[dict[str, Any]]:  # fmt: skip
    dataset = ray.data.from_items(
        [item.as_row() for item in plan.todo], override_num_blocks=max(1, math.ceil(len(plan.todo) / opts.task_inputs))
    )
    with warnings.catch_warnings():  # Ray 2.60 has no named parameter for these yet, and warns about the generic ones
        warnings.simplefilter("ignore")
        dataset = dataset.map_batches(
            SegmentActor,
            fn_constructor_kwargs={"shipments": shipments, "settings": settings, "threads": threads, "tally": tally},
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=opts.cpus_per_actor, num_gpus=opts.gpus_per_actor or None,
            batch_size=opts.task_inputs, batch_format="numpy", max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
        )  # fmt: skip
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    listener.start("infer", total=len(plan.todo), description=Path(plan.sources[0]).name, unit=plan.unit())
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            fresh = [row for row in map(json.loads, batch["row"]) if row["path"] not in seen]
            for row in fresh:
                seen.add(row["path"])
                if row["status"] == "skipped":
                    if opts.strict:
                        raise FcnDeployError(row["reason"])
                    listener.note(f"skipped {row['reason']}", level="warning")
            rows += fresh
            listener.advance("infer", len(fresh))
    finally:
        listener.finish("infer")
    return rows
