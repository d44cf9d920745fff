"""infer: run a video, an image or a folder of images through an engine.

Outputs (``OUT`` defaults to the current directory, not the source's folder, because sources are
often read-only, such as sample videos inside site-packages):

* a video ``SOURCE`` -> ``OUT`` = ``./SOURCE_STEM.overlay.mp4``: every frame with the coloured mask
  blended in (``alpha``) and a legend of class names and colours, at the source's size and frame
  rate, H.264 (libx264, yuv420p); with ``save_masks=DIR`` also ``DIR/frame_NNNNNN.png`` per frame.
* an image or a folder of images -> ``OUT`` = ``./SOURCE_STEM_masks/`` holding
  ``masks/NAME.png`` (palette PNG whose pixel values are class indices, the VOC SegmentationClass
  format; ``save_masks`` moves this folder) and ``overlays/NAME.png``, ``NAME`` being the image's
  file stem.  In a folder, an unreadable image is skipped with one warning line and listed in the
  summary's ``skipped`` (``strict`` stops at it instead): one bad file must not cost the batch.

A video other than ``.mp4`` may be named ``.mov`` or ``.mkv``.  The video appears under its final
name only when complete; mask PNGs are each written atomically, so a failed run keeps those done.
A run that fails before writing anything removes the output folders it created.

Video files are read and written through :mod:`fcn_deploy.media` (PyAV; H.264, odd sizes padded).

Decoding, inference and encoding overlap: a decode thread and an encode thread (which also draws
the overlays and writes the mask PNGs) sit around the inference loop in the main thread (where the
CUDA context lives), joined by bounded queues, so end-to-end FPS approaches engine-only FPS.  Every
blocking queue call polls, so an error in any thread, or Ctrl-C, stops all three promptly; the video
is written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .backends import Profile, Runner, open_runner
from .backends.remote import DEFAULT_MODEL, RemoteRunner
from .data.images import IMAGE_SUFFIXES, list_images, load_rgb, preprocess, resize_mask, resize_rgb, save_palette_png
from .errors import FcnDeployError
from .fileio import atomic_path, ensure_writable_dir
from .media import VIDEO_SUFFIXES, VideoInfo, add_video_stream, choose_codec, even_size, pad_to_even, probe_video
from .meta import ModelMeta

STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")
#: Frames in flight between two stages: enough to hide jitter, little enough to bound memory.
QUEUE_DEPTH = 8
#: How often a blocked queue call looks for a failed peer or a stop request.
_POLL_S = 0.1
_END = object()


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


class Segmenter:
    """Images in, masks out, for any runner: preprocessing, batching and the profile's limits.

    Frames run at their own size when the profile allows it; otherwise they are resized to fit
    (:func:`fit_inside`) and the masks resized back with nearest neighbour, and ``on_resize`` hears
    about it once, not per frame.
    """

    def __init__(self, runner: Runner, on_resize: Callable[[str], None] | None = None, mask_dtype: Any = np.uint8):
        if np.dtype(mask_dtype) == np.uint8 and runner.meta.num_classes > 256:
            raise FcnDeployError(f"{runner.path}: {runner.meta.num_classes} classes do not fit 8-bit masks (at most 256)")
        self.mask_dtype = mask_dtype  # int32 for a server's masks beyond 256 classes
        self.runner = runner
        self.meta: ModelMeta = runner.meta
        self.profile: Profile = runner.profile
        self.on_resize = on_resize or (lambda message: None)
        self.times = StageTimes()
        self.resized_frames = 0

    @classmethod
    def from_engine(cls, path: str | Path, on_resize: Callable[[str], None] | None = None, threads: int | None = None) -> Segmenter:
        """Open a checkpoint, an ONNX file or an engine (see :func:`fcn_deploy.backends.open_runner`)."""
        return cls(open_runner(path, threads=threads), on_resize)

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
            stop = start + 1
            while stop < len(images) and stop - start < self.profile.max[0] and images[stop].shape == size:
                stop += 1
            masks.extend(self._segment(images[start:stop]))
            start = stop
        return masks

    def _segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        height, width = images[0].shape[:2]
        run_batch = max(len(images), self.profile.min[0])
        run_size = (height, width)
        if not self.profile.contains(run_batch, height, width):
            run_size = fit_inside(self.profile, height, width)
            self._note_resize(len(images), (height, width), run_size)
        with self.times.measure("preprocess"):
            frames = [resize_rgb(image, *run_size) for image in images]
            frames += frames[-1:] * (run_batch - len(frames))  # a static batch wants more: repeat the last
            batch = preprocess(np.stack(frames), self.meta.mean, self.meta.std)
        with self.times.measure("infer"):
            prediction = self.runner.infer(batch, need_logits=False)
        with self.times.measure("postprocess"):
            return [resize_mask(mask.astype(self.mask_dtype), height, width) for mask in prediction.mask[: len(images)]]

    def _note_resize(self, count: int, size: tuple[int, int], run_size: tuple[int, int]) -> None:
        if not self.resized_frames:
            (_, min_h, min_w), (_, max_h, max_w) = self.profile.min, self.profile.max
            self.on_resize(
                f"input {size[0]}x{size[1]} is outside the engine's profile ({min_h}x{min_w} to {max_h}x{max_w}): "
                f"running it at {run_size[0]}x{run_size[1]} and resizing masks back (nearest neighbour); "
                "rebuild the engine with a wider profile to run at full size"
            )
        self.resized_frames += count


class RemoteSegmenter(Segmenter):
    """A :class:`Segmenter` whose engine is a model on a Triton server (``infer --server``).

    Frames go to the server as uint8 images, one request each and all of a batch in flight at once,
    and the server fits out-of-profile sizes exactly as :meth:`Segmenter._segment` does locally, so
    the masks equal a local run's with the same engine.
    """

    def __init__(self, server: str, model: str = DEFAULT_MODEL, on_resize: Callable[[str], None] | None = None):
        super().__init__(RemoteRunner(server, model), on_resize)

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        for image in images:
            height, width = image.shape[:2]
            if not self.profile.contains(self.profile.min[0], height, width):
                self._note_resize(1, (height, width), fit_inside(self.profile, height, width))
        with self.times.measure("infer"):
            masks = self.runner.remote.segment(images, in_flight=len(images))  # type: ignore[attr-defined]
        return [mask.astype(np.uint8, copy=False) for mask in masks]


# --- drawing ---------------------------------------------------------------------------------


def blend_mask(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float) -> np.ndarray:
    """Blend each pixel's class colour into ``image``; class 0 (background) keeps the image's colours.

    Done with Pillow's C blend/composite: this runs once per video frame, and numpy float blending
    of a full frame cost more than the engine's own pre-processing.
    """
    labels = Image.fromarray(mask.astype(np.uint8, copy=False))
    colours = labels.copy()
    flat = [int(v) for colour in list(palette)[:256] for v in colour]
    colours.putpalette(flat + [0] * (768 - len(flat)))
    base = Image.fromarray(image)
    blended = Image.blend(base, colours.convert("RGB"), alpha)
    foreground = labels.point(lambda label: 255 if label else 0)
    return np.array(Image.composite(blended, base, foreground))  # writable: the legend is drawn into it


@functools.lru_cache(maxsize=8)
def legend_patch(class_names: tuple[str, ...], palette: tuple[tuple[int, ...], ...], height: int, width: int) -> np.ndarray:
    """An RGBA legend (swatch + name per class) scaled to the frame, in columns when it is tall,
    cropped to ``height x width``."""
    font_size = max(8, min(24, height // 24))
    font = ImageFont.load_default(size=font_size)
    pad = max(2, font_size // 4)
    row_height = font_size + pad
    rows = max(1, min(len(class_names), (height - pad) // row_height))
    columns = math.ceil(len(class_names) / rows)
    column_width = font_size + 2 * pad + math.ceil(max(font.getlength(name) for name in class_names))
    patch = Image.new("RGBA", (columns * column_width + pad, rows * row_height + pad), (0, 0, 0, 160))
    draw = ImageDraw.Draw(patch)
    for index, (name, colour) in enumerate(zip(class_names, palette)):
        column, row = divmod(index, rows)
        x, y = pad + column * column_width, pad + row * row_height
        draw.rectangle([x, y, x + font_size - 1, y + font_size - 1], fill=(*colour, 255), outline=(255, 255, 255, 255))
        draw.text((x + font_size + pad, y + font_size / 2), name, fill=(255, 255, 255, 255), font=font, anchor="lm")
    return np.asarray(patch)[:height, :width]


def render_overlay(image: np.ndarray, mask: np.ndarray, meta: ModelMeta, alpha: float) -> np.ndarray:
    """The output picture: the mask blended into ``image``, with the legend in the top-left corner."""
    picture = blend_mask(image, mask, meta.palette, alpha)
    names = tuple(meta.class_names)
    palette = tuple(tuple(colour) for colour in meta.palette[: len(names)])
    legend = legend_patch(names, palette, *picture.shape[:2])
    region = picture[: legend.shape[0], : legend.shape[1]]
    opacity = legend[..., 3:] / 255.0
    region[...] = (legend[..., :3] * opacity + region * (1 - opacity) + 0.5).astype(np.uint8)
    return picture


# --- threads and queues ----------------------------------------------------------------------


class _Worker(threading.Thread):
    """A daemon thread that keeps its exception for the main thread to re-raise."""

    def __init__(self, name: str, target: Callable[..., None], args: tuple[Any, ...]):
        super().__init__(name=name, target=target, args=args, daemon=True)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _get_from(items: queue.Queue, producer: _Worker) -> Any:
    """Next item; re-raises the producer's error rather than waiting for a thread that died."""
    while True:
        try:
            return items.get(timeout=_POLL_S)
        except queue.Empty:
            if not producer.is_alive():
                producer.raise_error()
                return items.get_nowait()  # it finished: what it put is already there


def _put_to(items: queue.Queue, item: Any, consumer: _Worker) -> None:
    """Put ``item``; re-raises the consumer's error rather than waiting for a thread that died."""
    while True:
        try:
            return items.put(item, timeout=_POLL_S)
        except queue.Full:
            if not consumer.is_alive():
                consumer.raise_error()
                raise RuntimeError(f"the {consumer.name} thread stopped early")


def _put_unless(items: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        with contextlib.suppress(queue.Full):
            items.put(item, timeout=_POLL_S)
            return True
    return False


def _get_unless(items: queue.Queue, stop: threading.Event) -> Any:
    """Next item, or None once ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(queue.Empty):
            return items.get(timeout=_POLL_S)
    return None


# --- video -----------------------------------------------------------------------------------


def _decode_frames(info: VideoInfo, max_frames: int | None, frames: queue.Queue, stop: threading.Event, times: StageTimes) -> None:
    """Decode thread: RGB frames into ``frames``, then ``_END``."""
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
            if not _put_unless(frames, rgb, stop):
                return
            index += 1
    _put_unless(frames, _END, stop)


def _encode_frames(
    tmp: Path, final: Path, info: VideoInfo, codec: str, results: queue.Queue, stop: threading.Event,
    times: StageTimes, meta: ModelMeta, alpha: float, masks_dir: Path | None,
) -> None:  # fmt: skip
    """Encode thread: overlay each (index, frame, mask), encode it, save its mask PNG."""
    try:
        with av.open(str(tmp), "w") as container:
            stream = add_video_stream(container, codec, info.fps, info.height, info.width)
            while (item := _get_unless(results, stop)) is not _END:
                if item is None:
                    return  # stopped: the main thread discards the temporary file
                index, frame, mask = item
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
    segmenter: Segmenter, frames: queue.Queue, results: queue.Queue, decoder: _Worker, encoder: _Worker,
    batch: int, advance: Callable[[int], None],
) -> int:  # fmt: skip
    """The main thread's loop: batches from the decoder, masks to the encoder; returns the frame count."""
    count = 0
    ended = False
    while not ended:
        pending: list[np.ndarray] = []
        while len(pending) < batch:
            item = _get_from(frames, decoder)
            if item is _END:
                ended = True
                break
            pending.append(item)
        if pending:
            for frame, mask in zip(pending, segmenter.predict_batch(pending)):
                _put_to(results, (count, frame, mask), encoder)
                count += 1
            advance(len(pending))
    return count


def _run_video(
    info: VideoInfo, segmenter: Segmenter, out: Path, masks_dir: Path | None, alpha: float, batch: int,
    max_frames: int | None, progress: Progress,
) -> dict[str, Any]:  # fmt: skip
    codec = choose_codec()
    expected = min(filter(None, (info.frames, max_frames)), default=None)
    task = progress.add_task(info.path.name, total=expected)
    stop = threading.Event()
    frames: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    results: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    times = segmenter.times
    start = time.perf_counter()
    with atomic_path(out) as tmp:
        decoder = _Worker("fcn-deploy-decode", _decode_frames, (info, max_frames, frames, stop, times))
        encoder = _Worker(
            "fcn-deploy-encode", _encode_frames, (tmp, out, info, codec, results, stop, times, segmenter.meta, alpha, masks_dir)
        )
        decoder.start()
        encoder.start()
        try:
            count = _segment_stream(segmenter, frames, results, decoder, encoder, batch, lambda n: progress.advance(task, n))
            if count == 0:
                raise FcnDeployError(f"{info.path}: has no decodable video frames; check the file")
            _put_to(results, _END, encoder)
            while encoder.is_alive():
                encoder.join(_POLL_S)
            encoder.raise_error()
        finally:
            stop.set()
            decoder.join()
            encoder.join()
    wall = time.perf_counter() - start
    return {
        "kind": "video",
        "frames": count,
        "height": info.height,
        "width": info.width,
        "fps": float(info.fps),
        "codec": codec,
        "encoded_size": list(even_size(info.height, info.width)),
        "wall_s": wall,
    }


# --- images ----------------------------------------------------------------------------------


def _save_rgb_png(path: Path, picture: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")


def _load_or_skip(path: Path, convert_rgb: bool, strict: bool, skipped: list[dict[str, str]], console: Console) -> np.ndarray | None:
    """The image, or None (with one warning line, and ``path`` added to ``skipped``) when it is unreadable."""
    try:
        return load_rgb(path, convert=convert_rgb)
    except FcnDeployError as exc:
        if strict:
            raise
        skipped.append({"path": str(path), "reason": str(exc)})
        console.print(f"[yellow]warning:[/] skipped {escape(str(exc))}")
        return None


def _run_images(
    paths: list[Path], segmenter: Segmenter, out: Path, masks_dir: Path, alpha: float, batch: int,
    convert_rgb: bool, progress: Progress, strict: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Every readable image of ``paths``; unreadable ones are skipped and listed (``strict``: the first one raises)."""
    stems = [path.stem for path in paths]
    if len(set(stems)) < len(stems):
        twins = sorted({stem for stem in stems if stems.count(stem) > 1})
        raise FcnDeployError(f"images {', '.join(twins)} share a file stem, so their outputs would collide; rename them")
    overlays_dir = out / "overlays"
    task = progress.add_task("images", total=len(paths))
    times = segmenter.times
    start = time.perf_counter()
    skipped: list[dict[str, str]] = []
    done = 0
    for first in range(0, len(paths), batch):
        chunk = paths[first : first + batch]
        with times.measure("decode"):
            loaded = [(path, _load_or_skip(path, convert_rgb, strict, skipped, progress.console)) for path in chunk]
        loaded = [(path, image) for path, image in loaded if image is not None]
        for (path, image), mask in zip(loaded, segmenter.predict_batch([image for _, image in loaded])):
            with times.measure("postprocess"):
                picture = render_overlay(image, mask, segmenter.meta, alpha)
            with times.measure("encode"):
                save_palette_png(masks_dir / f"{path.stem}.png", mask, segmenter.meta.palette)
                _save_rgb_png(overlays_dir / f"{path.stem}.png", picture)
        done += len(loaded)
        progress.advance(task, len(chunk))
    if not done:
        raise FcnDeployError(
            f"{paths[0].parent}: none of its {len(paths)} images could be read (first: {skipped[0]['reason']}); replace or remove them"
        )
    return {"kind": "images", "frames": done, "images_found": len(paths), "skipped": skipped, "overlays_dir": str(overlays_dir),
            "wall_s": time.perf_counter() - start}  # fmt: skip


# --- the infer stage -------------------------------------------------------------------------


class _FpsColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} fps" if task.speed else "- fps", style="progress.data.speed")


def _missing_folders(*paths: Path | None) -> list[Path]:
    """The folders (of ``paths`` and their parents) that do not exist yet, outermost first."""
    missing: list[Path] = []
    for path in filter(None, paths):
        for folder in reversed([path, *path.parents]):
            if not folder.exists() and folder not in missing:
                missing.append(folder)
    return missing


@contextlib.contextmanager
def _removed_if_left_empty(folders: list[Path]) -> Iterator[None]:
    """On failure, remove those of ``folders`` (created by this run) that hold nothing, so a run
    that wrote nothing leaves nothing behind and the next one needs no --overwrite."""
    try:
        yield
    except BaseException:
        for folder in reversed(folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only ever removes an empty folder
        raise


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """An existing output (an empty folder aside) is replaced only with ``overwrite``."""
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    raise FcnDeployError(f"output already exists: {path}; pass --overwrite or choose another path")


def _source_images(source: Path) -> list[Path] | None:
    """The images ``source`` names, or None when it is (to be opened as) a video."""
    if source.is_dir():
        images = list_images(source)
        if not images:
            raise FcnDeployError(f"no images in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return images
    if not source.exists():
        raise FcnDeployError(f"source not found: {source}; give a video, an image or a folder of images")
    return [source] if source.suffix.lower() in IMAGE_SUFFIXES else None


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """The stage table, then, for a folder of images, how many were processed and skipped."""
    table = Table(title=f"infer: {summary['frames']} {'frames' if summary['kind'] == 'video' else 'images'} -> {summary['output']}")
    table.add_column("stage")
    table.add_column("ms / frame", justify="right")
    for stage, ms in summary["ms_per_frame"].items():
        table.add_row(stage, f"{ms:.2f}")
    table.add_row("end-to-end FPS", f"{summary['end_to_end_fps']:.1f}", style="bold")
    if summary["engine_fps"]:
        table.add_row("engine-only FPS", f"{summary['engine_fps']:.1f}")
    console.print(table)
    if summary.get("images_found", 0) > 1:
        skipped = len(summary.get("skipped") or [])
        line = f"processed {summary['frames']} of {summary['images_found']} images"
        console.print(f"{line}; [yellow]skipped {skipped} unreadable[/] (listed in --report)" if skipped else line)


def run_infer(
    source: Path,
    engine: Path,
    out: Path | None = None,
    alpha: float = 0.5,
    save_masks: Path | None = None,
    batch: int = 1,
    max_frames: int | None = None,
    overwrite: bool = False,
    convert_rgb: bool = False,
    console: Console | None = None,
    strict: bool = False,
    server: str | None = None,
    model: str = DEFAULT_MODEL,
) -> dict[str, Any]:
    """Segment a video, an image or a folder of images (see the module docstring for the outputs)
    with ``engine``, or with model ``model`` on the Triton server at ``server`` (``HOST:PORT``, gRPC;
    then ``batch`` frames are in flight at once); returns the summary that JSON reports carry, after
    printing it as a table.  In a folder, unreadable images are skipped and listed in
    ``summary["skipped"]`` unless ``strict``."""
    console = console or Console()
    source, engine = Path(source), (Path(engine) if engine is not None else None)
    if (engine is None) == (server is None):
        raise FcnDeployError("give an engine (--engine) or a server (--server HOST:PORT), not both")
    if not 0.0 <= alpha <= 1.0:
        raise FcnDeployError(f"--alpha {alpha}: must be between 0 and 1")
    if batch < 1:
        raise FcnDeployError(f"--batch {batch}: must be at least 1")
    if max_frames is not None and max_frames < 1:
        raise FcnDeployError(f"--max-frames {max_frames}: must be at least 1")
    images = _source_images(source)
    name = source.resolve().name if source.is_dir() else source.stem
    if images is None:
        out = Path(out) if out else Path.cwd() / f"{name}.overlay.mp4"
        if out.suffix.lower() not in VIDEO_SUFFIXES:
            raise FcnDeployError(f"output {out}: use a video file name ending in {', '.join(VIDEO_SUFFIXES)}")
        if out.is_dir():
            raise FcnDeployError(f"output {out} is a directory; give a video file name such as {name}.overlay.mp4")
        info = probe_video(source)
    else:
        out = Path(out) if out else Path.cwd() / f"{name}_masks"
        images = images[:max_frames]
    _refuse_existing(out, overwrite)
    masks_dir = Path(save_masks) if save_masks else (None if images is None else out / "masks")
    new_folders = _missing_folders(out.parent if images is None else out / "overlays", masks_dir)
    if masks_dir is not None:
        _refuse_existing(masks_dir, overwrite)
        ensure_writable_dir(masks_dir)

    def say_once(message: str) -> None:
        console.print(f"[yellow]{message}[/]")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _FpsColumn(), TimeRemainingColumn())
    def open_segmenter() -> Segmenter:
        if server:
            return RemoteSegmenter(server, model, on_resize=say_once)
        return Segmenter.from_engine(engine, on_resize=say_once)  # type: ignore[arg-type]

    with _removed_if_left_empty(new_folders), open_segmenter() as segmenter:
        what = segmenter.runner.path if server else engine.name  # type: ignore[union-attr]
        console.print(f"infer: {source} with {segmenter.runner.label} ({what}), batch {batch} -> {out}")
        with Progress(*columns, console=console) as progress:
            if images is None:
                summary = _run_video(info, segmenter, out, masks_dir, alpha, batch, max_frames, progress)
            else:
                strict = strict or not source.is_dir()  # a single image has nothing to skip to
                summary = _run_images(images, segmenter, out, masks_dir, alpha, batch, convert_rgb, progress, strict)
        frames, infer_s = summary["frames"], segmenter.times.seconds["infer"]
        summary.update(
            source=str(source),
            output=str(out),
            masks_dir=str(masks_dir) if masks_dir else None,
            engine=str(engine) if engine else segmenter.runner.path,
            server=server,
            backend=segmenter.runner.label,
            batch=batch,
            resized_frames=segmenter.resized_frames,
            ms_per_frame=segmenter.times.ms_per_frame(frames),
            end_to_end_fps=frames / summary["wall_s"],
            engine_fps=frames / infer_s if infer_s else None,
        )
    print_summary(console, summary)
    return summary
