"""Images in, masks out, for any runner: the one place that knows preprocessing, batching and the
engine profile's limits.  The video pipeline, image folders and the Triton server all segment
through a :class:`Segmenter`, so a frame gets the same mask whichever way it arrives."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Profile, Runner, open_runner
from ..backends.remote import DEFAULT_MODEL, RemoteRunner
from ..data.images import preprocess, resize_mask, resize_rgb
from ..errors import FcnDeployError
from ..meta import ModelMeta
from .tiles import Tiler

STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")


class StageTimes:
    """Seconds spent per pipeline stage, summed over the threads that do the work."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] += time.perf_counter() - start

    def ms_per_frame(self, frames: int) -> dict[str, float]:
        return {stage: 1000 * seconds / max(frames, 1) for stage, seconds in self.seconds.items()}


def fit_inside(profile: Profile, height: int, width: int) -> tuple[int, int]:
    """The size closest to ``height x width`` that the profile accepts, keeping the aspect ratio
    unless the profile's min and max leave no room for it."""
    (_, min_h, min_w), (_, max_h, max_w) = profile.min, profile.max
    scale = max(min(1.0, max_h / height, max_w / width), min_h / height, min_w / width)
    return min(max(round(height * scale), min_h), max_h), min(max(round(width * scale), min_w), max_w)


@dataclass
class Prepared:
    """Engine input for images of one size at ``run_size`` (masks wanted at ``size``): normalised
    float32 NCHW, or the uint8 NHWC images where the engine normalises them itself."""

    batch: np.ndarray
    size: tuple[int, int]
    run_size: tuple[int, int]


class Segmenter:
    """Images in, masks out, for any runner: preprocessing, batching and the profile's limits.

    Frames run at their own size when the profile allows it.  Frames larger than its max run in
    overlapping tiles at full resolution (``tile="auto"``, :mod:`.tiles`; ``"on"`` tiles whatever
    exceeds the opt size, ``"off"`` never tiles); the rest are resized to fit (:func:`fit_inside`) and
    the masks resized back with nearest neighbour, and ``on_resize`` hears about it once, not per
    frame.  Time spent per stage adds up in :attr:`times`.
    """

    def __init__(self, runner: Runner, on_resize: Callable[[str], None] | None = None, mask_dtype: Any = np.uint8,
                 tile: str = "auto", tile_overlap: int | None = None):  # fmt: skip
        if np.dtype(mask_dtype) == np.uint8 and runner.meta.num_classes > 256:
            raise FcnDeployError(f"{runner.path}: {runner.meta.num_classes} classes do not fit 8-bit masks (at most 256)")
        self.mask_dtype = mask_dtype  # int32 for a server's masks beyond 256 classes
        self.runner = runner
        self.meta: ModelMeta = runner.meta
        self.profile: Profile = runner.profile
        self.on_resize = on_resize or (lambda message: None)
        self.times = StageTimes()
        self.resized_frames = 0
        self.tiler = Tiler(runner, tile, tile_overlap)

    @property
    def engine_normalises(self) -> bool:
        """The engine normalises uint8 images on its own threads (``capabilities.uint8_images``), so
        preprocessing here is only the stacking (and any resize)."""
        return self.runner.capabilities.uint8_images

    @classmethod
    def from_engine(cls, path: str | Path, on_resize: Callable[[str], None] | None = None, threads: int | None = None,
                    tile: str = "auto", tile_overlap: int | None = None) -> Segmenter:  # fmt: skip
        """Open a checkpoint, an ONNX file or an engine (see :func:`fcn_deploy.backends.open_runner`)."""
        return cls(open_runner(path, threads=threads), on_resize, tile=tile, tile_overlap=tile_overlap)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``uint8 HxWx3`` RGB -> ``uint8 HxW`` class indices."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Masks for ``images``, in order.  Neighbours of one size share an engine call, split and
        padded to the profile's batch range."""
        masks: list[np.ndarray] = []
        start = 0
        while start < len(images):
            size = images[start].shape
            if self.tiler.wants(*size[:2]):
                with self.times.measure("infer"):
                    masks.append(self.tiler.segment(images[start], self.mask_dtype))
                start += 1
                continue
            stop = start + 1
            while stop < len(images) and stop - start < self.profile.max[0] and images[stop].shape == size:
                stop += 1
            masks.extend(self._segment(images[start:stop]))
            start = stop
        return masks

    def prepare_frame(self, image: np.ndarray) -> Prepared | None:
        """One image's engine input, made on any thread (the video decode thread makes it while the
        engine runs the frame before); None when the image goes through tiles."""
        return None if self.tiler.wants(*image.shape[:2]) else self._prepare([image])

    def predict_prepared(self, images: Sequence[np.ndarray], prepared: Sequence[Prepared | None]) -> list[np.ndarray]:
        """Masks for ``images`` from their :meth:`prepare_frame` inputs: the same masks as
        :meth:`predict_batch`, which takes over when any input is missing."""
        if any(item is None for item in prepared):
            return self.predict_batch(images)
        masks: list[np.ndarray] = []
        start = 0
        while start < len(prepared):
            first = prepared[start]
            stop = start + 1
            while (stop < len(prepared) and stop - start < self.profile.max[0]
                   and (prepared[stop].size, prepared[stop].run_size) == (first.size, first.run_size)):  # type: ignore[union-attr]  # fmt: skip
                stop += 1
            group = prepared[start:stop]
            batch = group[0].batch if len(group) == 1 else np.concatenate([item.batch for item in group])  # type: ignore[union-attr]
            masks.extend(self._run(Prepared(batch, first.size, first.run_size)))  # type: ignore[union-attr]
            start = stop
        return masks

    def _prepare(self, images: Sequence[np.ndarray]) -> Prepared:
        height, width = images[0].shape[:2]
        run_size = (height, width)
        if not self.profile.contains(max(len(images), self.profile.min[0]), height, width):
            run_size = fit_inside(self.profile, height, width)
        with self.times.measure("preprocess"):
            if len(images) == 1:  # a view, not a copy: the runner copies only what is not contiguous
                batch = resize_rgb(images[0], *run_size)[None]
            else:
                batch = np.stack([resize_rgb(image, *run_size) for image in images])
            if not self.engine_normalises:
                batch = preprocess(batch, self.meta.mean, self.meta.std)
        return Prepared(batch, (height, width), run_size)

    def _run(self, prepared: Prepared) -> list[np.ndarray]:
        count = len(prepared.batch)
        if prepared.run_size != prepared.size:
            self._note_resize(count, prepared.size, prepared.run_size)
        batch = prepared.batch
        if count < self.profile.min[0]:  # a static batch wants more: repeat the last
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.profile.min[0] - count, axis=0)])
        with self.times.measure("infer"):
            infer = self.runner.infer_images if self.engine_normalises else self.runner.infer
            prediction = infer(batch, need_logits=False, mask_dtype=self.mask_dtype)
        with self.times.measure("postprocess"):
            return [resize_mask(mask, *prepared.size) for mask in prediction.mask[:count]]

    def _segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._run(self._prepare(images))

    def _note_resize(self, count: int, size: tuple[int, int], run_size: tuple[int, int]) -> None:
        if not self.resized_frames:
            (_, min_h, min_w), (_, max_h, max_w) = self.profile.min, self.profile.max
            self.on_resize(
                f"input {size[0]}x{size[1]} is outside the engine's profile ({min_h}x{min_w} to {max_h}x{max_w}): "
                f"running it at {run_size[0]}x{run_size[1]} and resizing masks back (nearest neighbour); "
                "rebuild the engine with a wider profile, or tile it (tile auto or on), to run at full size"
            )
        self.resized_frames += count


class RemoteSegmenter(Segmenter):
    """A :class:`Segmenter` whose engine is a model on a Triton server (``fcn-deploy serve``).

    Frames go to the server as uint8 images, one request each and all of a batch in flight at once,
    and the server fits out-of-profile sizes exactly as :meth:`Segmenter._segment` does locally with
    ``tile="off"``, so the masks equal such a local run's with the same engine.
    """

    def __init__(self, server: str, model: str = DEFAULT_MODEL, on_resize: Callable[[str], None] | None = None, tile: str = "auto"):
        if tile == "on":
            raise FcnDeployError("tiles blend an engine's logits, and a server returns masks (it resizes what exceeds its profile): "
                                 "run tiles with a local engine", options=("tile", "server"))  # fmt: skip
        super().__init__(RemoteRunner(server, model), on_resize, tile="off")

    def prepare_frame(self, image: np.ndarray) -> Prepared | None:
        return None  # the server preprocesses

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        for image in images:
            height, width = image.shape[:2]
            if not self.profile.contains(self.profile.min[0], height, width):
                self._note_resize(1, (height, width), fit_inside(self.profile, height, width))
        with self.times.measure("infer"):
            masks = self.runner.remote.segment(images, in_flight=len(images))  # type: ignore[attr-defined]
        return [mask.astype(np.uint8, copy=False) for mask in masks]
