"""benchmark --ray: Ray's images/s against single-process ``infer DIR``, on the same engine and
images, in one run.  This bounds what Ray costs per image on top of the engine.

Both runs go through :func:`fcn_deploy.inference.run_infer` (single process first, then Ray, each
writing its own output folder, ``overwrite`` so neither resumes).  Two rates are kept for each:
end to end (from the call to its return, so Ray's start-up, joining the cluster and starting
actors, is in it) and steady (from the first mask file written to the last, which is what an
archive long enough to matter sees).  The masks of the two runs are compared byte for byte.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..events import SILENT, Listener


def _rates(masks: Path, started: float, ended: float, count: int) -> dict[str, Any]:
    """End to end from the call; steady from the first mask file written to the last (their
    mtimes), which times both runs alike, whatever the driver's view of Ray's streaming."""
    stamps = sorted(path.stat().st_mtime for path in masks.rglob("*.png"))
    first, last = (stamps[0], stamps[-1]) if stamps else (ended, ended)
    return {"images": count, "wall_s": ended - started, "first_output_s": first - started, "images_per_s": count / (ended - started),
            "steady_images_per_s": (len(stamps) - 1) / (last - first) if last > first else None}  # fmt: skip


def synthetic_images(folder: Path, count: int, height: int, width: int) -> Path:
    from PIL import Image

    from ..data.synthetic import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(make_scene(11, index, height, width)[0]).save(folder / f"{index:05d}.png")
    return folder


def compare_ray(
    engine: str | Path, images: str | Path | None = None, *, address: str = "local", count: int = 200, size: tuple[int, int] = (256, 256),
    actors: int | None = None, cpus_per_actor: float = 1.0, task_inputs: int = 4, batch: int = 1,
    work_dir: str | Path | None = None, listener: Listener = SILENT,
) -> dict[str, Any]:  # fmt: skip
    """Single-process ``infer`` then ``infer --ray`` over ``images`` (default: ``count`` synthetic
    scenes of ``size``); returns both runs' rates, the ratios (Ray / single process) and whether
    the masks are identical."""
    from ..inference import run_infer

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="fcn-deploy-ray-bench-"))
    try:
        source = Path(images) if images else synthetic_images(work / "images", count, *size)
        runs: dict[str, dict[str, Any]] = {}
        for name, extra in (("single_process", {}), ("ray", {"ray": address, "actors": actors, "cpus_per_actor": cpus_per_actor,
                                                              "task_inputs": task_inputs})):  # fmt: skip
            started = time.time()
            summary = run_infer(source, engine, out=work / name, overwrite=True, batch=batch, listener=listener, **extra)
            runs[name] = {**_rates(work / name / "masks", started, time.time(), summary["images_done"]), "skipped": len(summary["skipped"]),
                          "ray": summary.get("ray")}  # fmt: skip
        single, ray = runs["single_process"], runs["ray"]
        masks = [sorted((work / name / "masks").rglob("*.png")) for name in ("single_process", "ray")]
        identical = [p.relative_to(work / "single_process") for p in masks[0]] == [p.relative_to(work / "ray") for p in masks[1]] and all(
            a.read_bytes() == b.read_bytes() for a, b in zip(*masks)
        )
        return {
            "engine": str(engine), "images": str(images) if images else f"{count} synthetic {size[0]}x{size[1]} scenes",
            "runs": runs, "masks_identical": identical,
            "ratio_end_to_end": ray["images_per_s"] / single["images_per_s"],
            "ratio_steady": (ray["steady_images_per_s"] / single["steady_images_per_s"])
            if ray["steady_images_per_s"] and single["steady_images_per_s"] else None,
        }  # fmt: skip
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)
