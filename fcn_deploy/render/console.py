"""The console: one listener that turns the library's events into progress bars and lines.

Library functions never print; the CLI hands them a :class:`ConsoleListener`.  Long tasks show a
bar with done/total, the rate, the time left and the task's fields (loss, lr, ...); notes print
above the bars, coloured by level.  Text from the library is printed as text, never as markup, so
a path with ``[brackets]`` shows as it is.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from ..events import Level, Listener

STYLES = {"info": "", "note": "yellow", "warning": "yellow", "error": "red", "success": "green"}
PREFIX = {"warning": "warning: ", "note": "note: ", "error": "error: "}


class RateColumn(ProgressColumn):
    """Items per second, in the task's unit (``12.3 frames/s``)."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit") or "it"
        return Text(f"{task.speed:.1f} {unit}/s" if task.speed else f"- {unit}/s", style="progress.data.speed")


def styled(text: str, level: Level) -> str:
    """``text`` escaped, with the level's colour and prefix as markup."""
    style = STYLES.get(level, "")
    body = escape(PREFIX.get(level, "") + text)
    return f"[{style}]{body}[/]" if style else body


class ConsoleListener(Listener):
    """Progress bars and notes on a rich console."""

    def __init__(self, console: Console):
        self.console = console
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}

    def _bars(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=self.console,
            )  # fmt: skip
            self._progress.start()
        return self._progress

    def note(self, text: str, level: Level = "info") -> None:
        target = self._progress.console if self._progress is not None else self.console
        target.print(styled(text, level))

    def note_markup(self, markup: str) -> None:
        """A line that is already rich markup (the presentation layer's own, never library text)."""
        target = self._progress.console if self._progress is not None else self.console
        target.print(markup)

    def start(self, task: str, total: float | None = None, description: str = "", unit: str = "") -> None:
        self._tasks[task] = self._bars().add_task(description or task, total=total, unit=unit, info="")

    def advance(self, task: str, amount: float = 1, description: str | None = None, **fields: Any) -> None:
        if task not in self._tasks:
            self.start(task)
        info = "  ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in fields.items())
        update: dict[str, Any] = {"advance": amount, "info": escape(info)}
        if description is not None:
            update["description"] = escape(description)
        self._bars().update(self._tasks[task], **update)

    def finish(self, task: str) -> None:
        task_id = self._tasks.pop(task, None)
        if self._progress is None or task_id is None:
            return
        state = self._progress.tasks[[t.id for t in self._progress.tasks].index(task_id)]
        if state.total is None:
            self._progress.update(task_id, total=state.completed)
        if not self._tasks:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._tasks.clear()
