"""The console view of the backend registry (``fcn-deploy backends``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_backends(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="fcn-deploy backends (auto picks the first usable, top to bottom)")
    for column in ("name", "usable", "device", "precisions", "INT8 activations", "engine", "options", "why"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: (r.get("broken", False), r.get("auto_rank", 1 << 30))):
        if row.get("broken"):
            table.add_row(escape(row["name"]), "[red]broken[/]", "", "", "", "", "", escape(row["why"]))
            continue
        options = ", ".join(o["flag"] for o in row["options"])
        table.add_row(
            escape(row["name"]), "[green]yes[/]" if row["usable"] else "[yellow]no[/]", row["device"], ", ".join(row["precisions"]),
            row["int8_encoding"], f"*.{escape(row['engine_suffix'])}", escape(options), escape(row["why"]),
        )  # fmt: skip
    console.print(table)


def print_checks(console: Console, results: list) -> None:
    """The conformance suite's checks, one row each."""
    table = Table(title="conformance")
    for column in ("", "backend", "precision", "check", "detail"):
        table.add_column(column)
    for r in results:
        table.add_row("[green]✓[/]" if r.passed else "[red]✗[/]", escape(r.backend), r.precision, r.name, escape(r.detail))
    console.print(table)
    failed = sum(not r.passed for r in results)
    console.print("[green]conforms[/]" if not failed else f"[red]FAILED[/] {failed} of {len(results)} checks")
