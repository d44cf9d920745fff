"""The served model as it runs inside Triton: the Python backend's stub process owns the engine.

``fcn-deploy serve`` writes a one-model repository whose ``model.py`` imports this module.  Triton
passes each batch its dynamic batcher formed to the stub through shared memory, and the stub runs
it through the same :class:`~fcn_deploy.inference.Segmenter` as ``infer``.  So Python sits in the
data path once, in the process that computes, and each of ``--instances`` is a process of its own
with its own engine (no shared interpreter lock between instances).

The serving process is told what happened through a JSON-lines events file (named in the settings
file beside ``model.py``): refused and failed requests and resize notes as they happen, and each
instance's counts when Triton unloads it.  Lines are short and written with ``O_APPEND``, so the
instances' lines never interleave.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.remote import INPUT, OUTPUT, request_problem
from ..events import SILENT, Listener
from ..inference.segmenter import Segmenter

#: The settings file beside ``model.py``, and its keys: what the serving process tells the stub.
SETTINGS_FILE = "fcn-deploy-serve.json"
ENGINE_KEY, THREADS_KEY, EVENTS_KEY, MASK_DTYPE_KEY = "engine", "threads", "events", "mask_dtype"
COUNT_KEYS = ("requests", "images", "executions", "largest_batch", "refused", "failed")


def power_of_two_chunks(images: list[np.ndarray]) -> list[list[np.ndarray]]:
    """``images`` in chunks of falling powers of two (7 -> 4, 2, 1).  The dynamic batcher forms
    batches of any size up to the maximum, and a runner that compiles a graph per input shape
    (OpenVINO's static shapes) would otherwise meet a new shape, and compile, for each batch size;
    this way an image size brings at most log2(max batch) + 1 of them."""
    chunks, start = [], 0
    while start < len(images):
        size = 1 << ((len(images) - start).bit_length() - 1)
        chunks.append(images[start : start + size])
        start += size
    return chunks


class ServedModel:
    """One instance's arithmetic, apart from Triton (tests run it without a server): the requests of
    one batch in, one mask batch or one refusal per request out, counting what it served.

    A request that cannot be segmented (its reason from :func:`~fcn_deploy.backends.remote.request_problem`)
    gets its own error; the other requests of its batch are served.  The engine shares its cores
    with Triton, the clients on the host and the other instances (:meth:`Runner.share_cores`).
    """

    def __init__(self, segmenter: Segmenter, *, listener: Listener = SILENT):
        segmenter.runner.share_cores()
        self.segmenter = segmenter
        self.profile = segmenter.profile
        self.listener = listener
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(COUNT_KEYS, 0)

    def infer(self, batches: list[np.ndarray]) -> list[np.ndarray | Exception]:
        """Each request's ``[n, H, W, 3]`` batch -> its ``[n, H, W]`` masks, or the error it gets."""
        answers: list[np.ndarray | Exception | None] = [None] * len(batches)
        images: list[np.ndarray] = []
        served: list[tuple[int, int]] = []  # (request index, images in it)
        for index, batch in enumerate(batches):
            problem = request_problem(batch.shape, self.profile)
            if problem:
                answers[index] = ValueError(problem)
                self.listener.note(f"refused 1 request(s): {problem}", level="warning")
                continue
            images.extend(batch)
            served.append((index, len(batch)))
        refused = len(batches) - len(served)
        if served:
            try:
                masks = [mask for chunk in power_of_two_chunks(images) for mask in self.segmenter.predict_batch(chunk)]
            except Exception as exc:  # noqa: BLE001 - each request of the batch gets the error; the server stays up
                self.listener.note(f"failed {len(served)} request(s): {exc}", level="error")
                self._add(refused=refused, failed=len(served))
                return [exc if answer is None else answer for answer in answers]
            start = 0
            for index, size in served:
                answers[index] = np.stack(masks[start : start + size])
                start += size
        with self._lock:
            self.counts["refused"] += refused
            if served:
                self.counts["requests"] += len(served)
                self.counts["images"] += len(images)
                self.counts["executions"] += 1
                self.counts["largest_batch"] = max(self.counts["largest_batch"], len(images))
        return answers  # type: ignore[return-value]

    def _add(self, **increments: int) -> None:
        with self._lock:
            for key, value in increments.items():
                self.counts[key] += value


class EventsFile(Listener):
    """A listener that appends each note to the events file, one JSON line per note."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def note(self, message: str, level: str = "info") -> None:
        self.write({"note": message, "level": level})

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


class TritonPythonModel:
    """The Python backend's entry point (the stub calls ``initialize``, ``execute``, ``finalize``)."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        from ..backends import open_runner

        self.pb_utils = pb_utils
        folder = Path(args["model_repository"]) / str(args.get("model_version") or 1)
        parameters = json.loads((folder / SETTINGS_FILE).read_text())
        self.instance = args.get("model_instance_name", "instance")
        self.events = EventsFile(parameters[EVENTS_KEY])
        threads = int(parameters[THREADS_KEY]) or None
        runner = open_runner(parameters[ENGINE_KEY], threads=threads)
        noted = threading.Event()

        def note_resize(message: str) -> None:
            if not noted.is_set():
                noted.set()
                self.events.write({"note": message, "level": "note", "once": True})

        # one request, one engine call: the server fits sizes as `infer` does, never tiles
        segmenter = Segmenter(runner, on_resize=note_resize, mask_dtype=np.dtype(parameters[MASK_DTYPE_KEY]), tile="off")
        self.served = ServedModel(segmenter, listener=self.events)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = self.pb_utils
        batches = [pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy() for request in requests]
        responses = []
        for answer in self.served.infer(batches):
            if isinstance(answer, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(answer))))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, answer)]))
        return responses

    def finalize(self) -> None:
        seconds = self.served.segmenter.times.seconds
        self.events.write({"instance": self.instance, "counts": self.served.counts, "stage_seconds": seconds})
        self.served.segmenter.close()
        self.events.close()
