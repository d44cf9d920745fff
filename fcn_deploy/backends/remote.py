"""A segmentation model on a Triton Inference Server: the served interface, and the clients that use it.

The interface is the contract between ``fcn-deploy serve`` (:mod:`fcn_deploy.serve.triton`), the
repositories ``fcn-deploy export-triton`` writes (:mod:`fcn_deploy.serve.repository`) and every client:

* input ``image``: UINT8 RGB, dims ``[-1, -1, 3]`` with batching, so a client sends ``[n, H, W, 3]``;
* output ``mask``: class indices at the request's ``H x W``, UINT8 when every class index fits a
  byte (at most 256 classes, indices 0..255), INT32 beyond (:func:`mask_dtype`);
* sizes outside the engine's profile are fitted on the server, as ``infer`` fits them locally, and
  the masks resized back; a side longer than :data:`MAX_DOWNSCALE` times the profile's maximum is
  refused (fitting it would throw away most of the picture, and its bytes would be a cheap way to
  exhaust the server's memory);
* the model config's ``parameters`` publish what the engine's manifest knows (:func:`published_parameters`):
  the full model metadata, the profile, the class names and palette, the precision, the backend and
  the engine's sha256, so a client needs nothing but the server's address.

This module holds the client side too (it sits below :mod:`fcn_deploy.inference` and
:mod:`fcn_deploy.validate`, which use it): :class:`TritonModel` sends uint8 images over gRPC with
several requests in flight (``infer --server``, ``benchmark --server``), and :class:`RemoteRunner`
is a :class:`~.base.Runner` for ``validate --server``.  It is not a registry backend: the registry
lists backends that compile engines, and a server compiles nothing.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import FcnDeployError
from ..meta import ModelMeta
from .base import Runner, TensorSpec
from .profile import Profile
from .remote_shm import SharedMemoryPool

INPUT = "image"
OUTPUT = "mask"
DEFAULT_MODEL = "fcn"
#: How far the server shrinks an image to fit the profile, per side, before it refuses it.
MAX_DOWNSCALE = 4
#: Requests a client keeps in flight by default (``infer --server``).
DEFAULT_IN_FLIGHT = 8
#: Seconds one request may take before the client gives up on it.
REQUEST_TIMEOUT_S = 300.0
INSTALL_HINT = "pip install 'fcn-deploy[serve]' (nvidia-pytriton and tritonclient[grpc,http])"
META_KEY = "fcn_deploy.meta"
PROFILE_KEY = "fcn_deploy.profile"


def mask_dtype(num_classes: int) -> type[np.integer]:
    """UINT8 masks while every class index fits a byte (at most 256 classes: 0..255), INT32 beyond."""
    return np.uint8 if num_classes <= 256 else np.int32


def largest_request(profile: Profile) -> tuple[int, int]:
    """The largest image side by side the server accepts (:data:`MAX_DOWNSCALE` x the profile's maximum)."""
    return MAX_DOWNSCALE * profile.max[1], MAX_DOWNSCALE * profile.max[2]


def request_problem(shape: tuple[int, ...], profile: Profile) -> str | None:
    """Why an ``[n, H, W, 3]`` request cannot be segmented, or None.  Triton itself refuses a wrong
    input name, data type or rank before the model sees the request."""
    if len(shape) != 4 or shape[-1] != 3:
        return f"expected an [n, H, W, 3] RGB image batch, got shape {list(shape)}"
    n, height, width, _ = shape
    if n < 1 or height < 1 or width < 1:
        return f"the image is {height}x{width} (batch {n}); send at least one non-empty image"
    max_h, max_w = largest_request(profile)
    if height > max_h or width > max_w:
        return (
            f"the image is {height}x{width}, larger than this server accepts ({max_h}x{max_w}: {MAX_DOWNSCALE}x the engine "
            f"profile's maximum {profile.max[1]}x{profile.max[2]}); downscale it before sending"
        )
    return None


def published_parameters(meta: ModelMeta, profile: Profile, precision: str, backend: str, engine: str, sha256: str) -> dict[str, str]:
    """What a served model's config publishes under ``parameters`` (Triton parameters are strings)."""
    max_h, max_w = largest_request(profile)
    return {
        META_KEY: meta.to_json(),
        PROFILE_KEY: json.dumps(profile.to_dict()),
        "class_names": json.dumps(meta.class_names),
        "palette": json.dumps(meta.palette[: meta.num_classes]),
        "num_classes": str(meta.num_classes),
        "precision": precision,
        "backend": backend,
        "engine": engine,
        "engine_sha256": sha256,
        "largest_request": f"{max_h}x{max_w}",
    }


def parse_server(server: str) -> str:
    """``HOST:PORT`` (``grpc://`` allowed, ``[v6]:PORT`` for IPv6) -> ``host:port`` for the gRPC client."""
    text = server.strip()
    text = text[len("grpc://") :] if text.startswith("grpc://") else text
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", text)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise FcnDeployError(f"--server {server!r}: give HOST:PORT of the server's gRPC endpoint, e.g. 127.0.0.1:8001")
    return f"{match.group(1)}:{int(match.group(2))}"


def import_grpc_client():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise FcnDeployError(f"the Triton client is not installed: {INSTALL_HINT}") from exc
    return grpcclient


def server_message(exc: Exception) -> str:
    """One line from a Triton error.  PyTriton sends a server-side traceback: its last line, the
    exception (an fcn-deploy refusal names what to do), is what a person needs."""
    text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    text = str(text or exc).split("\nAt:\n")[0]
    text = re.sub(r"^\[request id: [^\]]*\] ", "", text.strip())
    if "Traceback (most recent call last)" in text:
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith((" ", "\t"))]
        text = lines[-1] if lines else text
    return re.sub(r"^fcn_deploy\.errors\.\w+: ", "", text.strip())


class TritonModel:
    """A served fcn-deploy model, over gRPC: uint8 images in, masks out, several requests in flight.

    One client is shared by every thread (tritonclient's gRPC client is thread-safe, unlike its
    gevent-based HTTP client).  On the server's host, with the token ``serve`` publishes for its
    user, images and masks go through system shared memory instead of the gRPC messages
    (:mod:`.remote_shm`; ``transport`` says which).
    """

    def __init__(self, server: str, model: str = DEFAULT_MODEL, timeout_s: float = 10.0, shared_memory: bool = True):
        grpcclient = import_grpc_client()
        from tritonclient.utils import InferenceServerException

        self._error = InferenceServerException
        self._grpc = grpcclient
        self.address = parse_server(server)
        self.model = model
        self.url = f"grpc://{self.address}/{model}"
        self.client = grpcclient.InferenceServerClient(self.address)
        self.shared_memory: SharedMemoryPool | None = None
        try:
            ready = self.client.is_server_ready(client_timeout=timeout_s)
        except InferenceServerException as exc:
            self.client.close()
            raise FcnDeployError(
                f"cannot reach a Triton gRPC endpoint at {self.address} ({server_message(exc)}); start one with "
                "`fcn-deploy serve ENGINE` and pass its gRPC port (default 8001)"
            ) from None
        try:
            if not ready:
                raise FcnDeployError(f"the Triton server at {self.address} is not ready yet; retry once it has loaded its models")
            if not self.client.is_model_ready(model, client_timeout=timeout_s):
                served = self._model_names()
                raise FcnDeployError(
                    f"the server at {self.address} has no ready model {model!r}; pass --model NAME"
                    + (f" (it serves: {', '.join(served)})" if served else " (the --name it was served under)")
                )
            self.config: dict[str, Any] = self.client.get_model_config(model, as_json=True, client_timeout=timeout_s)["config"]
            self._read_interface()
            self.shared_memory = SharedMemoryPool.open(self.client, self.address) if shared_memory else None
        except InferenceServerException as exc:
            self.client.close()
            raise FcnDeployError(f"{self.url}: {server_message(exc)}") from None
        except FcnDeployError:
            self.client.close()
            raise

    def _model_names(self) -> list[str]:
        try:
            index = self.client.get_model_repository_index(as_json=True)
        except self._error:  # the repository API may be restricted
            return []
        return [entry["name"] for entry in index.get("models", []) if entry.get("state", "READY") == "READY"]

    def _read_interface(self) -> None:
        """The served interface and the engine facts, from the model config; a model that is not an
        fcn-deploy segmenter is refused with what it lacks."""
        config = self.config
        inputs = {tensor["name"]: tensor for tensor in config.get("input", [])}
        outputs = {tensor["name"]: tensor for tensor in config.get("output", [])}
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        if INPUT not in inputs or OUTPUT not in outputs or META_KEY not in params or PROFILE_KEY not in params:
            raise FcnDeployError(
                f"{self.url}: is not an fcn-deploy segmentation model (needs input {INPUT!r}, output {OUTPUT!r} and the "
                f"{META_KEY!r} and {PROFILE_KEY!r} parameters; it has inputs {sorted(inputs)}, outputs {sorted(outputs)}); "
                "serve one with `fcn-deploy serve`"
            )
        self.meta = ModelMeta.from_json(params[META_KEY], self.url)
        self.profile = Profile.from_dict(json.loads(params[PROFILE_KEY]))
        self.precision = params.get("precision", "?")
        self.backend = params.get("backend", "?")
        self.engine = params.get("engine", "?")
        self.engine_sha256 = params.get("engine_sha256", "")
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.mask_dtype = mask_dtype(self.meta.num_classes)

    @property
    def transport(self) -> str:
        return "system shared memory" if self.shared_memory else "gRPC"

    def _inputs(self, images: np.ndarray):
        tensor = self._grpc.InferInput(INPUT, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        return [tensor]

    def infer(self, image: np.ndarray) -> np.ndarray:
        """One ``uint8 HxWx3`` image -> its ``HxW`` mask."""
        return self.segment([image], in_flight=1)[0]

    def segment(self, images: Sequence[np.ndarray], in_flight: int = DEFAULT_IN_FLIGHT) -> list[np.ndarray]:
        """Masks for ``images`` (``uint8 HxWx3`` each), in order, one request per image with up to
        ``in_flight`` of them in flight at once."""
        masks: list[np.ndarray | None] = [None] * len(images)
        errors: list[str] = []
        slots = threading.Semaphore(max(1, in_flight))
        done = threading.Condition()
        finished = [0]

        pool = self.shared_memory

        def on_done(index: int, batch: np.ndarray, pair, result, error) -> None:
            try:
                if error is not None:
                    errors.append(server_message(error))
                else:
                    masks[index] = (pool.masks(pair, batch, self.mask_dtype) if pair else result.as_numpy(OUTPUT))[0]
            except Exception as exc:  # noqa: BLE001 - an exception would vanish in gRPC's callback thread
                errors.append(f"unreadable response ({exc.__class__.__name__}: {exc})")
            finally:
                if pair:
                    pool.release(pair)
                slots.release()
                with done:
                    finished[0] += 1
                    done.notify_all()

        submitted = 0
        for index, image in enumerate(images):
            slots.acquire()
            if errors:
                slots.release()
                break
            batch = np.ascontiguousarray(image, dtype=np.uint8)[None]
            pair = self._region_pair(batch)
            inputs, outputs = pool.request(self._grpc, pair, batch, self.mask_dtype, INPUT, OUTPUT) if pair else (self._inputs(batch), None)
            try:
                self.client.async_infer(
                    self.model, inputs, outputs=outputs, client_timeout=REQUEST_TIMEOUT_S,
                    callback=lambda result, error, i=index, b=batch, p=pair: on_done(i, b, p, result, error),
                )  # fmt: skip
            except self._error as exc:
                if pair:
                    pool.release(pair)
                slots.release()
                errors.append(server_message(exc))
                break
            submitted += 1
        with done:
            done.wait_for(lambda: finished[0] >= submitted)
        if errors:
            raise FcnDeployError(f"{self.url}: {errors[0]}")
        return masks  # type: ignore[return-value]

    def _region_pair(self, batch: np.ndarray):
        """Shared-memory regions for ``batch``, or None: then it goes over gRPC (no shared memory, or no
        room for a larger region in /dev/shm, or the server refused to map one)."""
        pool = self.shared_memory
        if pool is None:
            return None
        try:
            return pool.acquire(batch.nbytes, pool.mask_bytes(batch, self.mask_dtype))
        except Exception:  # noqa: BLE001 - the same masks come back over gRPC
            return None

    def statistics(self) -> dict[str, int]:
        """The model's cumulative counts from Triton's statistics API (empty when it is restricted):
        ``inference_count`` (images), ``execution_count`` (engine runs), success/fail counts and times (ns)."""
        try:
            stats = self.client.get_inference_statistics(self.model, as_json=True)
        except self._error:
            return {}
        entries = stats.get("model_stats", [])
        if not entries:
            return {}
        entry = entries[0]
        infer = entry.get("inference_stats", {})
        return {
            "inference_count": int(entry.get("inference_count", 0)),
            "execution_count": int(entry.get("execution_count", 0)),
            "success_count": int(infer.get("success", {}).get("count", 0)),
            "fail_count": int(infer.get("fail", {}).get("count", 0)),
            "queue_ns": int(infer.get("queue", {}).get("ns", 0)),
            "compute_infer_ns": int(infer.get("compute_infer", {}).get("ns", 0)),
        }

    def describe(self) -> str:
        return f"{self.url} ({self.backend}-{self.precision}, {self.engine}, sha256 {self.engine_sha256[:12]})"

    def close(self) -> None:
        if self.shared_memory:
            self.shared_memory.close()
        self.client.close()

    def __enter__(self) -> TritonModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemoteRunner(Runner):
    """A served model as a :class:`Runner`, so ``validate`` runs against a server unchanged.

    The server takes uint8 images, and a runner takes preprocessed float batches.  Validation's
    batches are uint8 scenes through :func:`fcn_deploy.data.images.preprocess`, which is invertible:
    this runner recovers the exact images, checks that preprocessing them again gives the batch bit
    for bit (refusing anything else), and sends them.  It returns the server's masks and no logits.
    """

    backend = "triton"

    def __init__(self, server: str, model: str = DEFAULT_MODEL, in_flight: int = DEFAULT_IN_FLIGHT):
        self.remote = TritonModel(server, model)
        super().__init__(self.remote.url, self.remote.meta, self.remote.profile, self.remote.precision)
        self.in_flight = in_flight

    @property
    def label(self) -> str:
        return f"triton-{self.remote.backend}-{self.precision}"

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(INPUT, "uint8", ("batch", "height", "width", 3))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(OUTPUT, np.dtype(mask_dtype(self.meta.num_classes)).name, ("batch", "height", "width"))]

    def images_from_batch(self, batch: np.ndarray) -> np.ndarray:
        """The uint8 ``NxHxWx3`` images whose :func:`preprocess` is ``batch``, exactly."""
        from ..data.images import preprocess

        scale = (255.0 * np.asarray(self.meta.std, dtype=np.float64)).reshape(1, 3, 1, 1)
        shift = np.asarray(self.meta.mean, dtype=np.float64).reshape(1, 3, 1, 1) / np.asarray(self.meta.std).reshape(1, 3, 1, 1)
        values = (batch.astype(np.float64) + shift) * scale
        images = np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        if not np.array_equal(preprocess(images, self.meta.mean, self.meta.std), batch):
            raise FcnDeployError(
                f"{self.path}: a server takes uint8 images, and this batch is not preprocessed uint8 images "
                "(fcn_deploy.data.images.preprocess); send images with `fcn-deploy infer --server` instead"
            )
        return np.ascontiguousarray(images)

    def infer_impl(self, batch: np.ndarray, need_logits: bool) -> dict[str, np.ndarray | None]:
        images = self.images_from_batch(batch)
        masks = self.remote.segment(list(images), in_flight=self.in_flight)
        return {"logits": None, "mask": np.stack(masks)}

    def close(self) -> None:
        self.remote.close()
