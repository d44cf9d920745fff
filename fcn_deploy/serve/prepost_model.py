"""fcn-deploy pre- and post-processing for Triton's Python backend.

``fcn-deploy export-triton`` copies this file, as ``model.py``, into the two Python models of the
repository it writes; the ``fcn_deploy.role`` parameter of each model's config picks the role.  It
runs inside NVIDIA's Triton container, where fcn-deploy is not installed, so it is self-contained
(numpy; Pillow when installed) and mirrors what ``fcn-deploy serve`` does through
:class:`fcn_deploy.inference.Segmenter` (tests/test_serve.py checks the two agree):

* ``preprocess``: ``image`` UINT8 ``[n, H, W, 3]`` -> ``preprocessed`` ``[n, 3, h, w]`` for the engine,
  where ``h x w`` is ``H x W`` fitted into the engine's profile (``fit_inside``) and the pixels are
  scaled to [0, 1] and normalised with the model's mean and std, plus ``original_size`` INT32 ``[n, 2]``;
* ``postprocess``: the engine's ``logits`` ``[n, C, h, w]`` (argmax, first maximum wins) or ``mask``
  ``[n, h, w]``, and ``original_size`` -> ``mask`` ``[n, H, W]`` (nearest neighbour back to ``H x W``).

Label maps are resized in numpy, index for index as Pillow does.  Images are resized with Pillow, as
fcn-deploy does, when the container has it (``pip install pillow``); otherwise with Pillow's
bilinear filter in numpy float arithmetic, within one grey level of Pillow's.  Only sizes outside
the engine's profile are resized.  A request that cannot be segmented (empty, or larger than
``largest_request``) gets its own error response; the other requests of the batch are served.
"""

from __future__ import annotations

import json

import numpy as np

try:  # the resize fcn-deploy itself uses; optional in the container
    from PIL import Image
except ImportError:  # pragma: no cover - exercised by the numpy path in tests
    Image = None


def fit_inside(profile_min, profile_max, height: int, width: int) -> tuple[int, int]:
    """The size closest to ``height x width`` that the profile accepts (fcn_deploy.inference.fit_inside)."""
    (_, min_h, min_w), (_, max_h, max_w) = profile_min, profile_max
    scale = max(min(1.0, max_h / height, max_w / width), min_h / height, min_w / width)
    return min(max(round(height * scale), min_h), max_h), min(max(round(width * scale), min_w), max_w)


def _bilinear_weights(size_in: int, size_out: int) -> np.ndarray:
    """Pillow's bilinear (triangle) filter as a ``size_out x size_in`` matrix, widened when shrinking."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for out in range(size_out):
        center = (out + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), size_in)
        taps = np.arange(lo, hi)
        row = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) / support))
        weights[out, lo:hi] = row / row.sum() if row.sum() else row
    return weights


def resize_rgb(image: np.ndarray, height: int, width: int, use_pillow: bool = True) -> np.ndarray:
    """Bilinear resize of a ``uint8 HxWx3`` image (Pillow's, else its filter in numpy)."""
    if image.shape[:2] == (height, width):
        return image
    if use_pillow and Image is not None:
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    out = image
    if out.shape[1] != width:  # Pillow resizes horizontally first and rounds to 8 bits between passes
        out = np.einsum("ow,hwc->hoc", _bilinear_weights(out.shape[1], width), out.astype(np.float64))
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if out.shape[0] != height:
        out = np.einsum("oh,hwc->owc", _bilinear_weights(out.shape[0], height), out.astype(np.float64))
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out


def _nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """Pillow's nearest-neighbour source indices: it steps ``(i + 0.5) * in / out`` by repeated
    addition, whose rounding decides ties, so the same sequential sum is taken here."""
    step = size_in / size_out
    positions = np.cumsum(np.concatenate([[step * 0.5], np.full(size_out - 1, step)]))
    return np.minimum(positions.astype(np.int64), size_in - 1)


def resize_labels(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map, index for index Pillow's (fcn_deploy.data.images.resize_mask)."""
    if mask.shape[:2] == (height, width):
        return mask
    return mask[_nearest_index(mask.shape[0], height)[:, None], _nearest_index(mask.shape[1], width)[None, :]]


def preprocess(images: np.ndarray, mean, std) -> np.ndarray:
    """``uint8 NxHxWx3`` -> ``float32 Nx3xHxW``, the same float32 arithmetic as fcn_deploy.data.images.preprocess."""
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).reshape(1, 3, 1, 1)
    shift = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).reshape(1, 3, 1, 1)
    out = np.empty((images.shape[0], 3, *images.shape[1:3]), dtype=np.float32)
    np.multiply(images.transpose(0, 3, 1, 2), scale, out=out)
    np.subtract(out, shift, out=out)
    return out


def argmax_labels(logits: np.ndarray) -> np.ndarray:
    """Class indices of ``N x C x H x W`` logits, the first maximum winning (as fcn-deploy's runners)."""
    return np.argmax(logits, axis=1)


def request_problem(shape, largest: tuple[int, int]) -> str | None:
    """Why an ``[n, H, W, 3]`` request cannot be segmented (fcn_deploy.backends.remote.request_problem)."""
    if len(shape) != 4 or shape[-1] != 3:
        return f"expected an [n, H, W, 3] RGB image batch, got shape {list(shape)}"
    n, height, width, _ = shape
    if n < 1 or height < 1 or width < 1:
        return f"the image is {height}x{width} (batch {n}); send at least one non-empty image"
    if height > largest[0] or width > largest[1]:
        limit = f"{largest[0]}x{largest[1]}"
        return f"the image is {height}x{width}, larger than this server accepts ({limit}); downscale it before sending"
    return None


class Processing:
    """Both roles' arithmetic, apart from Triton (tests run it without a server)."""

    def __init__(self, parameters: dict[str, str]):
        meta = json.loads(parameters["fcn_deploy.meta"])
        profile = json.loads(parameters["fcn_deploy.profile"])
        self.role = parameters["fcn_deploy.role"]
        self.mean, self.std = meta["mean"], meta["std"]
        self.profile_min, self.profile_max = profile["min"], profile["max"]
        self.largest = tuple(int(v) for v in parameters["largest_request"].split("x"))
        self.engine_input_dtype = np.dtype(parameters.get("engine_input_dtype", "float32"))
        self.engine_output = parameters.get("engine_output", "logits")
        self.mask_dtype = np.dtype(parameters.get("mask_dtype", "uint8"))
        self.use_pillow = Image is not None

    def preprocess(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        problem = request_problem(images.shape, self.largest)
        if problem:
            raise ValueError(problem)
        height, width = images.shape[1:3]
        run_h, run_w = (height, width)
        if not all(lo <= s <= hi for s, lo, hi in zip((height, width), self.profile_min[1:], self.profile_max[1:])):
            run_h, run_w = fit_inside(self.profile_min, self.profile_max, height, width)
        frames = np.stack([resize_rgb(image, run_h, run_w, self.use_pillow) for image in images])
        sizes = np.tile(np.array([[height, width]], dtype=np.int32), (len(images), 1))
        return preprocess(frames, self.mean, self.std).astype(self.engine_input_dtype, copy=False), sizes

    def postprocess(self, engine_output: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        labels = argmax_labels(engine_output) if self.engine_output == "logits" else engine_output
        masks = [resize_labels(label.astype(self.mask_dtype), int(h), int(w)) for label, (h, w) in zip(labels, sizes)]
        return np.stack(masks)


class TritonPythonModel:
    """The Python backend's entry point: one response per request, an error response for a request
    that cannot be segmented."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.processing = Processing(parameters)
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        if self.processing.role == "preprocess" and not self.processing.use_pillow:
            pb_utils.Logger.log_warn(
                "fcn-deploy preprocess: Pillow is not installed, so out-of-profile images are resized with numpy "
                "(within one grey level of fcn-deploy serve's Pillow resize); pip install pillow for identical results"
            )

    def execute(self, requests):
        pb_utils = self.pb_utils
        responses = []
        for request in requests:
            try:
                if self.processing.role == "preprocess":
                    images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
                    batch, sizes = self.processing.preprocess(images)
                    outputs = [pb_utils.Tensor("preprocessed", batch), pb_utils.Tensor("original_size", sizes)]
                else:
                    output = pb_utils.get_input_tensor_by_name(request, self.processing.engine_output).as_numpy()
                    sizes = pb_utils.get_input_tensor_by_name(request, "original_size").as_numpy()
                    outputs = [pb_utils.Tensor("mask", self.processing.postprocess(output, sizes))]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
