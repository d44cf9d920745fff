"""Video files: probe, codec choice, stream setup, odd-size padding, and writing frames.

A leaf module (PyAV and numpy only), so that data generation, inference and serving can write and
read videos without pulling in engines.

PyAV rather than OpenCV: PyAV is FFmpeg's own API, so it decodes every codec and container FFmpeg
does, gives exact control of frames and timestamps, and its wheels ship libx264 to encode H.264;
OpenCV's VideoWriter rarely has H.264 in the pip wheels, hides codec failures (an empty file and
``False``), and drags in GUI libraries.

Odd sizes: H.264 in yuv420p needs an even width and height, so an odd frame is padded by one
replicated row or column before encoding.  That keeps the one codec every player and browser plays,
for a one-pixel border, where MPEG-4 Part 2 would keep the exact size but not play in browsers.
MPEG-4 Part 2 (FFmpeg's ``mpeg4``) is used only when the FFmpeg build lacks libx264.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import FcnDeployError
from .fileio import atomic_path

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
PREFERRED_CODEC = "libx264"
FALLBACK_CODEC = "mpeg4"


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    height: int
    width: int
    fps: Fraction
    frames: int | None  # as the container header says; None when it does not
    codec: str


def probe_video(path: Path) -> VideoInfo:
    """Check that ``path`` is a video this FFmpeg can decode, before any thread or output exists."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FcnDeployError(f"{path}: has no video stream; pass a video, an image or a folder of images")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise FcnDeployError(
                    f"{path}: this FFmpeg build has no decoder for its {stream.name or 'unknown'} video codec; "
                    "transcode it to H.264 (ffmpeg -i IN -c:v libx264 OUT.mp4)"
                )
            fps = stream.average_rate or stream.guessed_rate or Fraction(25)  # raw streams may state none
            return VideoInfo(
                path, stream.codec_context.height, stream.codec_context.width, Fraction(fps), stream.frames or None, stream.name or "?"
            )
    except av.FFmpegError as exc:
        raise FcnDeployError(
            f"{path}: not a readable video ({exc.__class__.__name__}: {exc.strerror or exc}); check that the file is a complete video"
        ) from exc


def choose_codec() -> str:
    """libx264 where this FFmpeg build has it (the PyAV wheels do), else FFmpeg's own MPEG-4 Part 2."""
    return PREFERRED_CODEC if PREFERRED_CODEC in av.codecs_available else FALLBACK_CODEC


def even_size(height: int, width: int) -> tuple[int, int]:
    return height + height % 2, width + width % 2


def pad_to_even(picture: np.ndarray) -> np.ndarray:
    """Replicate the last row/column of an odd-sized frame: yuv420p needs even sides."""
    height, width = picture.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return picture
    return np.pad(picture, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def add_video_stream(container, codec: str, fps: Fraction, height: int, width: int):
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = even_size(height, width)
    stream.pix_fmt = "yuv420p"
    if codec == PREFERRED_CODEC:
        stream.options = {"crf": "20", "preset": "veryfast"}  # visually clean; cheap next to the engine
    else:
        stream.bit_rate = int(0.25 * height * width * fps)  # mpeg4's 200 kb/s default smears overlays
    return stream


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int | Fraction = 25) -> int:
    """Encode uint8 RGB frames to a video (atomically) with the encoder ``infer`` uses; returns the count."""
    count = 0
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = add_video_stream(container, choose_codec(), Fraction(fps), *frame.shape[:2])
            video_frame = av.VideoFrame.from_ndarray(pad_to_even(np.ascontiguousarray(frame)), format="rgb24")
            video_frame.pts = count
            container.mux(stream.encode(video_frame))
            count += 1
        if stream is None:
            raise FcnDeployError(f"{path}: no frames to write")
        container.mux(stream.encode(None))
    return count
