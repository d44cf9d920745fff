"""One video file -> its overlay video (and, if asked, one mask PNG per frame).

Decoding, inference and encoding overlap: a decode thread (which also preprocesses each frame for
the engine) and an encode thread (which also draws the overlays and writes the mask PNGs) sit around
the inference loop in the calling thread (where the CUDA context lives), joined by bounded queues,
so the calling thread runs little but the engine and end-to-end FPS approaches engine-only FPS.
Every blocking queue call polls (:mod:`.threads`), so an error in any thread, or Ctrl-C, stops all
three promptly; the video is written under a temporary name and renamed only when complete.

Video files are read and written through :mod:`fcn_deploy.media` (PyAV; H.264, odd sizes padded).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..data.images import save_palette_png
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..fileio import atomic_path
from ..media import VideoInfo, add_video_stream, choose_codec, even_size, pad_to_even, probe_video
from ..meta import ModelMeta
from .overlay import render_overlay
from .segmenter import Segmenter, StageTimes
from .threads import END, QUEUE_DEPTH, Worker, get_from, get_unless, join_polling, put_to, put_unless


def _decode_frames(info: VideoInfo, max_frames: int | None, frames: queue.Queue, stop: threading.Event, times: StageTimes,
                   prepare: Callable[[np.ndarray], Any]) -> None:  # fmt: skip
    """Decode thread: ``(RGB frame, its engine input)`` into ``frames``, then ``END``.  Preprocessing
    here, while the engine runs the frame before, leaves the calling thread only the engine."""
    index = 0
    first_size = None
    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = container.decode(stream)
        while max_frames is None or index < max_frames:
            with times.measure("decode"):
                try:
                    frame = next(decoded, None)
                except av.FFmpegError as exc:
                    raise FcnDeployError(
                        f"{info.path}: decoding failed at frame {index} ({exc.strerror or exc}); the file may be truncated or corrupt"
                    ) from exc
                if frame is None:
                    break
                rgb = frame.to_ndarray(format="rgb24")
            first_size = first_size or rgb.shape[:2]
            if rgb.shape[:2] != first_size:
                raise FcnDeployError(
                    f"{info.path}: frame {index} is {rgb.shape[0]}x{rgb.shape[1]} but the video starts at "
                    f"{first_size[0]}x{first_size[1]}; re-encode it at one size"
                )
            if not put_unless(frames, (rgb, prepare(rgb)), stop):
                return
            index += 1
    put_unless(frames, END, stop)


def _encode_frames(
    tmp: Path, final: Path, info: VideoInfo, codec: str, results: queue.Queue, stop: threading.Event,
    times: StageTimes, meta: ModelMeta, alpha: float, masks_dir: Path | None, on_mask: Callable[[np.ndarray], None] | None = None,
) -> None:  # fmt: skip
    """Encode thread: overlay each (index, frame, mask), encode it, save its mask PNG."""
    try:
        with av.open(str(tmp), "w") as container:
            stream = add_video_stream(container, codec, info.fps, info.height, info.width)
            while (item := get_unless(results, stop)) is not END:
                if item is None:
                    return  # stopped: the calling thread discards the temporary file
                index, frame, mask = item
                if on_mask is not None:
                    on_mask(mask)
                with times.measure("postprocess"):
                    picture = render_overlay(frame, mask, meta, alpha)
                with times.measure("encode"):
                    video_frame = av.VideoFrame.from_ndarray(pad_to_even(picture), format="rgb24")
                    video_frame.pts = index
                    container.mux(stream.encode(video_frame))
                    if masks_dir is not None:
                        save_palette_png(masks_dir / f"frame_{index:06d}.png", mask, meta.palette)
            with times.measure("encode"):
                container.mux(stream.encode(None))
    except (OSError, av.FFmpegError) as exc:  # disk full, permissions, encoder errors
        raise FcnDeployError(f"{final}: writing failed ({exc.strerror or exc}); free disk space or choose another output path") from exc


def _segment_stream(
    segmenter: Segmenter, frames: queue.Queue, results: queue.Queue, decoder: Worker, encoder: Worker,
    batch: int, advance: Callable[[int], None],
) -> int:  # fmt: skip
    """The calling thread's loop: batches from the decoder, masks to the encoder; returns the frame count."""
    count = 0
    ended = False
    while not ended:
        pending: list[np.ndarray] = []
        prepared: list[Any] = []
        while len(pending) < batch:
            item = get_from(frames, decoder)
            if item is END:
                ended = True
                break
            pending.append(item[0])
            prepared.append(item[1])
        if pending:
            for frame, mask in zip(pending, segmenter.predict_prepared(pending, prepared)):
                put_to(results, (count, frame, mask), encoder)
                count += 1
            advance(len(pending))
    return count


def run_video(
    source: Path | VideoInfo,
    segmenter: Segmenter,
    out: Path,
    *,
    masks_dir: Path | None = None,
    alpha: float = 0.5,
    batch: int = 1,
    max_frames: int | None = None,
    listener: Listener = SILENT,
    task: str = "infer",
    description: str | None = None,
    on_mask: Callable[[np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Segment every frame of ``source`` (up to ``max_frames``), ``batch`` frames per engine call;
    write the overlay video to ``out`` (atomically) and, with ``masks_dir``, ``frame_NNNNNN.png``
    per frame (``on_mask`` sees each frame's mask, in order, in the encode thread).  Returns the video's facts (kind, frames, size, fps, codec, encoded_size, wall_s);
    stage times add up in ``segmenter.times``.  Progress goes to ``listener`` as ``task``."""
    info = source if isinstance(source, VideoInfo) else probe_video(Path(source))
    out = Path(out)
    codec = choose_codec()
    expected = min(filter(None, (info.frames, max_frames)), default=None)
    stop = threading.Event()
    frames: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    results: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    times = segmenter.times
    start = time.perf_counter()
    listener.start(task, total=expected, description=description or info.path.name, unit="frames")
    try:
        with atomic_path(out) as tmp:
            decoder = Worker("fcn-deploy-decode", _decode_frames, (info, max_frames, frames, stop, times, segmenter.prepare_frame))
            encoder = Worker(
                "fcn-deploy-encode",
                _encode_frames,
                (tmp, out, info, codec, results, stop, times, segmenter.meta, alpha, masks_dir, on_mask),
            )
            decoder.start()
            encoder.start()
            try:
                count = _segment_stream(segmenter, frames, results, decoder, encoder, batch, lambda n: listener.advance(task, n))
                if count == 0:
                    raise FcnDeployError(f"{info.path}: has no decodable video frames; check the file")
                put_to(results, END, encoder)
                join_polling(encoder)
            finally:
                stop.set()
                decoder.join()
                encoder.join()
    finally:
        listener.finish(task)
    return {
        "kind": "video",
        "frames": count,
        "height": info.height,
        "width": info.width,
        "fps": float(info.fps),
        "codec": codec,
        "encoded_size": list(even_size(info.height, info.width)),
        "wall_s": time.perf_counter() - start,
    }
