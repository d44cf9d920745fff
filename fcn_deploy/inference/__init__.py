"""Inference: images and videos through an engine, with nothing printed.

* :mod:`.segmenter`: :class:`Segmenter` (images in, masks out, for any runner), :class:`RemoteSegmenter`
  (a model on a Triton server), :func:`fit_inside`, :class:`StageTimes`.
* :mod:`.overlay`: the coloured mask and legend drawn onto a picture.
* :mod:`.video`: one video file -> its overlay video (:func:`run_video`); :mod:`.threads` its plumbing.
* :mod:`.images`: images -> mask and overlay PNGs (:func:`run_images`, :func:`save_outputs`).
* :mod:`.tiles`: images larger than the engine in overlapping tiles (:func:`segment_tiled`, :func:`estimate_context`).
* :mod:`.run`: the infer stage (:func:`run_infer`): outputs, options, the summary.
* :mod:`.sources`: folders, globs and lists -> inputs and their mirrored outputs; :mod:`.archive`
  the per-input work; :mod:`.batch` resuming and the results table; :mod:`.ray_batch` (with
  :mod:`.ray_engine`) the same run on Ray Data.
"""

from .images import run_images, save_outputs
from .overlay import blend_mask, legend_patch, render_overlay
from .run import InferOptions, run_infer
from .segmenter import STAGES, RemoteSegmenter, Segmenter, StageTimes, fit_inside
from .tiles import TILE_MODES, estimate_context, segment_tiled
from .video import run_video

__all__ = [
    "STAGES", "TILE_MODES", "InferOptions", "RemoteSegmenter", "Segmenter", "StageTimes", "blend_mask", "estimate_context",
    "fit_inside", "legend_patch", "render_overlay", "run_images", "run_infer", "run_video", "save_outputs", "segment_tiled",
]  # fmt: skip
