"""The infer stage: a video, an image or a folder of images through an engine (or a Triton server).

Outputs (``out`` defaults to the current directory, not the source's folder, because sources are
often read-only, such as sample videos inside site-packages):

* a video ``SOURCE`` -> ``./SOURCE_STEM.overlay.mp4``: every frame with the coloured mask blended
  in (``alpha``) and a legend of class names and colours, at the source's size and frame rate,
  H.264 (libx264, yuv420p); with ``save_masks=DIR`` also ``DIR/frame_NNNNNN.png`` per frame
  (:mod:`.video`).  An output video may be named ``.mp4``, ``.mov`` or ``.mkv``.
* an image or a folder of images -> ``./SOURCE_STEM_masks/`` holding ``masks/NAME.png`` (moved by
  ``save_masks``) and ``overlays/NAME.png`` (:mod:`.images`).

The video appears under its final name only when complete; mask PNGs are each written atomically,
so a failed run keeps those done.  A run that fails before writing anything removes the output
folders it created.  Nothing is printed: the header, the one-time resize warning, skipped images
and progress go to the ``listener``; the summary is returned (``fcn_deploy.render.infer`` shows it).

Several sources, a folder, a glob or a list of paths make an archive run instead (:mod:`.sources`
for the inputs and the output tree, :mod:`.batch` for resuming and the results table): images and
videos mixed, outputs mirrored below ``OUT/masks`` and ``OUT/overlays``, inputs already complete
skipped unless ``overwrite``; in this process, or with ``ray`` on a Ray cluster (:mod:`.ray_batch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.remote import DEFAULT_MODEL
from ..data.images import IMAGE_SUFFIXES, list_images
from ..errors import FcnDeployError
from ..events import SILENT, Listener
from ..fileio import ensure_writable_dir
from ..media import VIDEO_SUFFIXES, probe_video
from .images import run_images
from .segmenter import RemoteSegmenter, Segmenter
from .tiles import TILE_MODES
from .video import run_video


@dataclass
class InferOptions:
    """How :func:`run_infer` runs and where it writes."""

    #: The output video or folder (default: in the current directory, named after the source).
    out: Path | None = None
    #: Opacity of the class colours in the overlays, 0..1.
    alpha: float = 0.5
    #: A folder for the mask PNGs (a video's are only written with it).
    save_masks: Path | None = None
    #: Frames per engine call (with a server: frames in flight).
    batch: int = 1
    #: Stop after this many frames (or images).
    max_frames: int | None = None
    #: Replace an existing output.
    overwrite: bool = False
    #: Convert grayscale, palette and RGBA images to RGB instead of refusing them.
    convert_rgb: bool = False
    #: Stop at the first unreadable image of a folder instead of skipping it.
    strict: bool = False
    #: ``HOST:PORT`` of a Triton server's gRPC endpoint, to run there instead of on an engine.
    server: str | None = None
    #: The served model's name.
    model: str = DEFAULT_MODEL
    #: Tiles for images larger than the engine's profile (:mod:`.tiles`): ``auto`` (beyond its max), ``on``
    #: (beyond its opt size) or ``off`` (resize to fit, as before).
    tile: str = "auto"
    #: Pixels neighbouring tiles share (default: twice the receptive-field reach measured on the engine).
    tile_overlap: int | None = None
    #: Archive runs: write overlay PNGs of images (videos always get their overlay video).
    overlays: bool = True
    #: Archive runs: also write each video's frame masks (``masks/VIDEO/frame_NNNNNN.png``).
    video_masks: bool = False
    #: Run on Ray: ``"local"`` starts a Ray for this run, ``"auto"`` / ``"ray://HOST:PORT"`` / ``HOST:PORT`` joins one.
    ray: str | None = None
    #: With ``ray``: actors (each holds one engine); default: as many as the cluster's CPUs (or GPUs) allow.
    actors: int | None = None
    #: With ``ray``: CPUs per actor, which is also its runtime's thread count.
    cpus_per_actor: float = 1.0
    #: With ``ray``: GPUs per actor (0 on CPU clusters).
    gpus_per_actor: float = 0.0
    #: With ``ray``: inputs per Ray task (one task's work is retried whole if its actor dies).
    task_inputs: int = 4

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise FcnDeployError(f"alpha {self.alpha}: must be between 0 and 1", options=("alpha",))
        if self.batch < 1:
            raise FcnDeployError(f"batch {self.batch}: must be at least 1", options=("batch",))
        if self.tile not in TILE_MODES:
            raise FcnDeployError(f"tile {self.tile!r}: choose one of {', '.join(TILE_MODES)}", options=("tile",))
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise FcnDeployError(f"tile overlap {self.tile_overlap}: must be at least 0 pixels", options=("tile_overlap",))
        if self.max_frames is not None and self.max_frames < 1:
            raise FcnDeployError(f"max_frames {self.max_frames}: must be at least 1", options=("max_frames",))
        if self.actors is not None and self.actors < 1:
            raise FcnDeployError(f"actors {self.actors}: must be at least 1", options=("actors",))
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise FcnDeployError(
                "CPUs per actor must be above 0 and GPUs per actor at least 0", options=("cpus_per_actor", "gpus_per_actor")
            )
        if self.task_inputs < 1:
            raise FcnDeployError(f"task_inputs {self.task_inputs}: must be at least 1", options=("task_inputs",))
        if self.ray and self.server:
            raise FcnDeployError("run on a Ray cluster or on a Triton server, not both", options=("ray", "server"))


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
    that wrote nothing leaves nothing behind and the next one needs no overwriting."""
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
    raise FcnDeployError(f"output already exists: {path}; allow overwriting it or choose another path", options=("overwrite",))


def source_images(source: Path) -> list[Path] | None:
    """The images ``source`` names, or None when it is (to be opened as) a video."""
    if source.is_dir():
        images = list_images(source)
        if not images:
            raise FcnDeployError(f"no images in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return images
    if not source.exists():
        raise FcnDeployError(f"source not found: {source}; give a video, an image or a folder of images")
    return [source] if source.suffix.lower() in IMAGE_SUFFIXES else None


def is_archive(sources: Sequence[str | Path]) -> bool:
    """Whether ``sources`` make an archive run (anything but one video or one image file)."""
    from .sources import LIST_SUFFIXES

    if len(sources) != 1:
        return True
    path = Path(sources[0])
    return not path.is_file() or path.suffix.lower() in LIST_SUFFIXES


def run_infer(
    source: str | Path | Sequence[str | Path],
    engine: str | Path | None = None,
    options: InferOptions | None = None,
    *,
    listener: Listener = SILENT,
    **settings: Any,
) -> dict[str, Any]:
    """Segment a video, an image or a folder of images (see the module docstring for the outputs)
    with ``engine``, or with the model on the Triton server ``options.server``; returns the summary
    that JSON reports carry.  ``settings`` are :class:`InferOptions` fields, overriding ``options``.
    In a folder, unreadable images are skipped, warned about and listed in ``summary["skipped"]``
    unless ``strict``."""
    opts = dataclasses.replace(options or InferOptions(), **settings)
    opts.check()
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    engines = [Path(e) for e in engine] if isinstance(engine, (list, tuple)) else ([Path(engine)] if engine is not None else [])
    engine = engines[0] if engines else None
    if (engine is None) == (opts.server is None):
        raise FcnDeployError("give an engine or a server (HOST:PORT), not both", options=("engine", "server"))
    if opts.ray or is_archive(sources):
        return _run_archive(sources, engines, opts, listener)
    source = Path(sources[0])
    images = source_images(source)
    name = source.resolve().name if source.is_dir() else source.stem
    if images is None:
        out = Path(opts.out) if opts.out else Path.cwd() / f"{name}.overlay.mp4"
        if out.suffix.lower() not in VIDEO_SUFFIXES:
            raise FcnDeployError(f"output {out}: use a video file name ending in {', '.join(VIDEO_SUFFIXES)}", options=("out",))
        if out.is_dir():
            raise FcnDeployError(f"output {out} is a directory; give a video file name such as {name}.overlay.mp4", options=("out",))
        info = probe_video(source)
    else:
        out = Path(opts.out) if opts.out else Path.cwd() / f"{name}_masks"
        images = images[: opts.max_frames]
    _refuse_existing(out, opts.overwrite)
    masks_dir = Path(opts.save_masks) if opts.save_masks else (None if images is None else out / "masks")
    new_folders = _missing_folders(out.parent if images is None else out / "overlays", masks_dir)
    if masks_dir is not None:
        _refuse_existing(masks_dir, opts.overwrite)
        ensure_writable_dir(masks_dir)

    def warn(message: str) -> None:
        listener.note(message, level="warning")

    def open_segmenter() -> Segmenter:
        if opts.server:
            return RemoteSegmenter(opts.server, opts.model, on_resize=warn, tile=opts.tile)
        return Segmenter.from_engine(engine, on_resize=warn, tile=opts.tile, tile_overlap=opts.tile_overlap)  # type: ignore[arg-type]

    with _removed_if_left_empty(new_folders), open_segmenter() as segmenter:
        what = segmenter.runner.path if opts.server else engine.name  # type: ignore[union-attr]
        listener.note(f"infer: {source} with {segmenter.runner.label} ({what}), batch {opts.batch} -> {out}")
        if images is None:
            summary = run_video(info, segmenter, out, masks_dir=masks_dir, alpha=opts.alpha, batch=opts.batch,
                                max_frames=opts.max_frames, listener=listener, description=name)  # fmt: skip
        else:
            strict = opts.strict or not source.is_dir()  # a single image has nothing to skip to
            summary = run_images(images, segmenter, out, masks_dir=masks_dir, alpha=opts.alpha, batch=opts.batch,
                                 convert_rgb=opts.convert_rgb, strict=strict, listener=listener, description=name)  # fmt: skip
        frames, infer_s = summary["frames"], segmenter.times.seconds["infer"]
        summary.update(
            source=str(source),
            output=str(out),
            masks_dir=str(masks_dir) if masks_dir else None,
            engine=str(engine) if engine else segmenter.runner.path,
            server=opts.server,
            backend=segmenter.runner.label,
            batch=opts.batch,
            resized_frames=segmenter.resized_frames,
            tiles=segmenter.tiler.summary(),
            ms_per_frame=segmenter.times.ms_per_frame(frames),
            end_to_end_fps=frames / summary["wall_s"],
            engine_fps=frames / infer_s if infer_s else None,
        )
    return summary


def _run_archive(sources: list, engines: list[Path], opts: InferOptions, listener: Listener) -> dict[str, Any]:
    """Folders, globs, lists and several files: resumable, mirrored outputs, a results table."""
    from .archive import ItemSettings
    from .batch import finish_run, plan_run, run_local

    engine = engines[0] if engines else None
    plan = plan_run(sources, opts)
    settings = ItemSettings(plan.layout, alpha=opts.alpha, batch=opts.batch, convert_rgb=opts.convert_rgb, max_frames=opts.max_frames,
                            tile=opts.tile, tile_overlap=opts.tile_overlap)  # fmt: skip
    strict = opts.strict
    new_folders = _missing_folders(plan.layout.overlays, plan.layout.masks)
    label = ", ".join(plan.sources)
    if opts.ray:
        from .ray_batch import run_ray

        with _removed_if_left_empty(new_folders):
            rows, wall_s, facts = run_ray(plan, engines, settings, opts, listener=listener)
            summary = finish_run(plan, rows, wall_s)
        summary.update(facts)
        return summary

    def warn(message: str) -> None:
        listener.note(message, level="warning")

    with _removed_if_left_empty(new_folders):
        segmenter = (RemoteSegmenter(opts.server, opts.model, on_resize=warn, tile=opts.tile) if opts.server
                     else Segmenter.from_engine(engine, on_resize=warn, tile=opts.tile, tile_overlap=opts.tile_overlap))  # fmt: skip
        with segmenter:
            what = segmenter.runner.path if opts.server else engine.name  # type: ignore[union-attr]
            listener.note(f"infer: {label} with {segmenter.runner.label} ({what}), batch {opts.batch} -> {plan.out}")
            if len(plan.todo) < len(plan.items):
                listener.note(
                    f"{len(plan.items) - len(plan.todo)} of {len(plan.items)} inputs already complete in {plan.out}: skipping them"
                )
            rows, wall_s = run_local(plan, segmenter, settings, strict=strict, listener=listener, description=Path(plan.sources[0]).name)
            summary = finish_run(plan, rows, wall_s)
            frames, infer_s = summary["frames"], segmenter.times.seconds["infer"]
            summary.update(
                engine=str(engine) if engine else segmenter.runner.path,
                server=opts.server,
                backend=segmenter.runner.label,
                batch=opts.batch,
                resized_frames=segmenter.resized_frames,
                ms_per_frame=segmenter.times.ms_per_frame(frames),
                end_to_end_fps=frames / wall_s if wall_s else 0.0,
                engine_fps=frames / infer_s if infer_s else None,
                ray=None,
            )
    return summary
