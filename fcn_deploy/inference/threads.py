"""Thread and queue plumbing for the video pipeline: workers that keep their exception, and queue
calls that poll, so that an error in any thread, or Ctrl-C, stops every thread promptly instead of
leaving one blocked on a queue that nobody will serve again."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

#: Items in flight between two stages: enough to hide jitter, little enough to bound memory.
QUEUE_DEPTH = 8
#: How often a blocked queue call looks for a failed peer or a stop request.
POLL_S = 0.1
#: The item a producer puts last.
END = object()


class Worker(threading.Thread):
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


def get_from(items: queue.Queue, producer: Worker) -> Any:
    """Next item; re-raises the producer's error rather than waiting for a thread that died."""
    while True:
        try:
            return items.get(timeout=POLL_S)
        except queue.Empty:
            if not producer.is_alive():
                producer.raise_error()
                return items.get_nowait()  # it finished: what it put is already there


def put_to(items: queue.Queue, item: Any, consumer: Worker) -> None:
    """Put ``item``; re-raises the consumer's error rather than waiting for a thread that died."""
    while True:
        try:
            return items.put(item, timeout=POLL_S)
        except queue.Full:
            if not consumer.is_alive():
                consumer.raise_error()
                raise RuntimeError(f"the {consumer.name} thread stopped early") from None


def put_unless(items: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; says whether it was put."""
    while not stop.is_set():
        with contextlib.suppress(queue.Full):
            items.put(item, timeout=POLL_S)
            return True
    return False


def get_unless(items: queue.Queue, stop: threading.Event) -> Any:
    """Next item, or None once ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(queue.Empty):
            return items.get(timeout=POLL_S)
    return None


def join_polling(worker: Worker) -> None:
    """Wait for ``worker`` in short joins (so Ctrl-C reaches the main thread), then re-raise its error."""
    while worker.is_alive():
        worker.join(POLL_S)
    worker.raise_error()
