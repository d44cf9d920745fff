"""How the library tells its caller what it is doing, without printing.

Library functions take a keyword-only ``listener`` and call it; by default (:data:`SILENT`) nothing
is shown, so a Python API user sees no output.  The CLI passes the presentation layer's
console listener (:class:`fcn_deploy.render.console.ConsoleListener`), which draws progress bars and
prints notes.  A listener never changes what a function computes or returns.
"""

from __future__ import annotations

from typing import Any, Literal

Level = Literal["info", "note", "warning", "error", "success"]


class Listener:
    """Receives notes, progress of long tasks, and partial results.  Every method may be ignored.

    * ``note``: a line a person reads (``level`` says how it is shown).
    * ``start`` / ``advance`` / ``finish``: a long task, named by ``task`` (unique while it runs),
      with an optional ``total``; ``advance`` may carry ``fields`` (loss, lr, ...) to show with it.
    * ``result``: a finished piece of work (``"validation_case"``, ``"export_case"``, ...), for
      listeners that show results as they come.
    """

    def note(self, text: str, level: Level = "info") -> None:
        pass

    def start(self, task: str, total: float | None = None, description: str = "", unit: str = "") -> None:
        pass

    def advance(self, task: str, amount: float = 1, description: str | None = None, **fields: Any) -> None:
        pass

    def finish(self, task: str) -> None:
        pass

    def result(self, kind: str, value: Any) -> None:
        pass


#: The default listener: shows nothing.
SILENT = Listener()


class Recorder(Listener):
    """Keeps everything it hears (for tests and for callers that show it later)."""

    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, Any]] = []
        self.results: list[tuple[str, Any]] = []

    def note(self, text: str, level: Level = "info") -> None:
        self.notes.append((level, text))

    def start(self, task: str, total: float | None = None, description: str = "", unit: str = "") -> None:
        self.events.append(("start", task, total))

    def advance(self, task: str, amount: float = 1, description: str | None = None, **fields: Any) -> None:
        self.events.append(("advance", task, amount))

    def finish(self, task: str) -> None:
        self.events.append(("finish", task, None))

    def result(self, kind: str, value: Any) -> None:
        self.results.append((kind, value))

    def texts(self, level: str | None = None) -> list[str]:
        return [text for lvl, text in self.notes if level is None or lvl == level]
