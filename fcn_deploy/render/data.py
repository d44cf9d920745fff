"""Console views of models and data: the architectures table and scores on ground truth."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_scores(console: Console, scores: dict[str, Any], title: str) -> None:
    """IU per class, then the paper's four metrics."""
    table = Table(title=escape(title))
    table.add_column("class")
    table.add_column("IU", justify="right")
    for name, iu in zip(scores["class_names"], scores["per_class_iu"]):
        table.add_row(escape(name), "n/a" if iu != iu else f"{iu:.4f}")
    console.print(table)
    console.print(f"pixel acc {scores['pixel_accuracy']:.4f}  mean acc {scores['mean_accuracy']:.4f}  "
                  f"mean IU {scores['mean_iu']:.4f}  f.w. IU {scores['fw_iu']:.4f}")  # fmt: skip


def print_models(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="fcn-deploy architectures (21 classes)")
    for column in ("name", "parameters", "min input", "stride", "description"):
        table.add_column(column, justify="right" if column in ("parameters", "min input", "stride") else "left")
    for row in rows:
        table.add_row(row["name"], f"{row['parameters'] / 1e6:.1f}M", f"{row['min_size']}x{row['min_size']}", str(row["output_stride"]),
                      escape(row["description"]))  # fmt: skip
    console.print(table)
