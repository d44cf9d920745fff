"""The console view of ``debug precision``: the worst quantized nodes, and what keeping each in float gives."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_node_errors(console: Console, report: dict[str, Any], rows: int = 15) -> None:
    table = Table(title=escape(f"quantized nodes of {report['graph']} on {report['backend']}, worst first "
                               f"(masks agree on {report['agreement']:.4%} as built)"))  # fmt: skip
    for column in ("node", "op", "introduced", "rel L2", "cosine", "agreement if float"):
        table.add_column(column, justify="left" if column in ("node", "op") else "right")
    for node in report["nodes"][:rows]:
        if_float = node.get("agreement_if_float")
        table.add_row(escape(node["name"]), node["op_type"], f"{node['introduced']:.4f}", f"{node['rel_l2']:.4f}", f"{node['cosine']:.5f}",
                      "-" if if_float is None else f"{if_float:.4%}")  # fmt: skip
    console.print(table)
    if report.get("float_nodes"):
        console.print(f"kept in float by the build: {escape(', '.join(report['float_nodes']))}")
    console.print(f"{report['quantized_nodes']} quantized nodes; introduced = a node's output error minus the largest error it reads")
