"""Images -> mask PNGs and overlay PNGs.

For each image ``NAME``: ``masks/NAME.png``, a palette PNG whose pixel values are class indices
(the VOC SegmentationClass format), and ``overlays/NAME.png``, each written atomically.  In a
folder, an unreadable image is skipped with one warning and listed in the result's ``skipped``
(``strict`` stops at it instead): one bad file must not cost the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import load_rgb, save_palette_png
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..fileio import atomic_path
from ..meta import ModelMeta
from .overlay import render_overlay
from .segmenter import Segmenter, StageTimes


def save_rgb_png(path: Path, picture: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")


def save_outputs(
    name: str, image: np.ndarray, mask: np.ndarray, meta: ModelMeta, *, masks_dir: Path, overlays_dir: Path,
    alpha: float = 0.5, times: StageTimes | None = None,
) -> None:  # fmt: skip
    """One image's outputs: ``masks_dir/NAME.png`` (class indices) and ``overlays_dir/NAME.png``."""
    times = times or StageTimes()
    with times.measure("postprocess"):
        picture = render_overlay(image, mask, meta, alpha)
    with times.measure("encode"):
        save_palette_png(masks_dir / f"{name}.png", mask, meta.palette)
        save_rgb_png(overlays_dir / f"{name}.png", picture)


def load_or_skip(path: Path, skipped: list[dict[str, str]], *, convert_rgb: bool = False, strict: bool = False,
                 listener: Listener = SILENT) -> np.ndarray | None:  # fmt: skip
    """The image, or None when it is unreadable: then a warning goes to ``listener`` and ``path``
    (with the reason) is added to ``skipped``; with ``strict`` the error is raised instead."""
    try:
        return load_rgb(path, convert=convert_rgb)
    except FcnDeployError as exc:
        if strict:
            raise
        skipped.append({"path": str(path), "reason": str(exc)})
        listener.note(f"skipped {exc}", level="warning")
        return None


def check_stems(paths: Sequence[Path]) -> None:
    """Outputs are named by file stem: refuse two images whose outputs would collide."""
    stems = [path.stem for path in paths]
    if len(set(stems)) < len(stems):
        twins = sorted({stem for stem in stems if stems.count(stem) > 1})
        raise FcnDeployError(f"images {', '.join(twins)} share a file stem, so their outputs would collide; rename them")


def run_images(
    paths: Sequence[Path],
    segmenter: Segmenter,
    out: Path,
    *,
    masks_dir: Path | None = None,
    alpha: float = 0.5,
    batch: int = 1,
    convert_rgb: bool = False,
    strict: bool = False,
    listener: Listener = SILENT,
    task: str = "infer",
    description: str | None = None,
) -> dict[str, Any]:
    """Every readable image of ``paths``, ``batch`` per engine call: masks to ``masks_dir``
    (default ``out/masks``), overlays to ``out/overlays``.  Unreadable images are skipped and listed
    (``strict``: the first one raises); none readable raises.  Returns kind, frames (images done),
    images_found, skipped, overlays_dir and wall_s; stage times add up in ``segmenter.times``."""
    paths = [Path(path) for path in paths]
    check_stems(paths)
    out = Path(out)
    masks_dir = Path(masks_dir) if masks_dir is not None else out / "masks"
    overlays_dir = out / "overlays"
    times = segmenter.times
    start = time.perf_counter()
    skipped: list[dict[str, str]] = []
    done = 0
    listener.start(task, total=len(paths), description=description or "images", unit="images")
    try:
        for first in range(0, len(paths), batch):
            chunk = paths[first : first + batch]
            with times.measure("decode"):
                loaded = [(path, load_or_skip(path, skipped, convert_rgb=convert_rgb, strict=strict, listener=listener))
                          for path in chunk]  # fmt: skip
            loaded = [(path, image) for path, image in loaded if image is not None]
            for (path, image), mask in zip(loaded, segmenter.predict_batch([image for _, image in loaded])):
                save_outputs(path.stem, image, mask, segmenter.meta, masks_dir=masks_dir, overlays_dir=overlays_dir, alpha=alpha,
                             times=times)  # fmt: skip
            done += len(loaded)
            listener.advance(task, len(chunk))
    finally:
        listener.finish(task)
    if not done:
        raise FcnDeployError(
            f"{paths[0].parent}: none of its {len(paths)} images could be read (first: {skipped[0]['reason']}); replace or remove them"
        )
    return {"kind": "images", "frames": done, "images_found": len(paths), "skipped": skipped, "overlays_dir": str(overlays_dir),
            "wall_s": time.perf_counter() - start}  # fmt: skip
