"""The console view of ``fcn-deploy inspect``: I/O, what the file is, the op histogram, the metadata, and the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..adopt.contract import shape_text

#: What each verdict means, said after it.
VERDICTS = {
    "ready": ": fits the toolkit (one float image input N x 3 x H x W, logits N x C x H x W or a mask N x H x W)",
    "adoptable": ": the graph fits (one float image input N x 3 x H x W, per-pixel logits); `fcn-deploy adopt` adds the rest",
    "does not fit": ": fcn-deploy needs one float image input N x 3 x H x W and logits N x C x H x W or a mask N x H x W",
}


def _head(report: dict[str, Any]) -> str:
    kind = report["kind"]
    if kind == "onnx":
        external = "".join(f", external data {e['file']}" + ("" if e["present"] else " (missing)") for e in report["external_data"])
        opsets = ", ".join(f"{d} {v}" for d, v in report["opsets"].items())
        return (f"ONNX, IR {report['ir_version']}, opset {opsets}, producer {report['producer'] or '?'}, "
                f"{report['bytes'] / 1e6:.1f} MB{external}")  # fmt: skip
    if kind == "engine":
        profile = report.get("profile") or {}
        return (f"{report['backend']} {report['precision']} engine (manifest {Path(report['path']).name}.json), "
                f"profile N,H,W {profile.get('min')} .. {profile.get('max')}, opt {profile.get('opt')}, built {report.get('built_at')}")  # fmt: skip
    return f"fcn-deploy checkpoint, {report['bytes'] / 1e6:.1f} MB"


def _io_table(report: dict[str, Any]) -> Table:
    table = Table(title="inputs and outputs")
    for column in ("", "role", "name", "dtype", "declared shape", "dynamic axes", "when run"):
        table.add_column(column)
    probed = (report.get("probe") or {}).get("outputs", {})
    for direction, rows in (("in", report["inputs"]), ("out", report["outputs"])):
        for row in rows:
            run_shape = probed.get(row["name"], {}).get("shape")
            if direction == "in" and row["role"] == "image" and report.get("probe"):
                run_shape = report["probe"].get("input")
            table.add_row(direction, row["role"], escape(row["name"]), row["dtype"], escape(shape_text(row["shape"])),
                          ", ".join(map(str, row["dynamic"])) or "none",
                          "x".join(map(str, run_shape)) if run_shape else "")  # fmt: skip
    return table


def print_inspection(console: Console, report: dict[str, Any]) -> None:
    """Tables a person reads.  ``report["fit"]["next"]``, when set, is printed as it is: the CLI
    writes the library's next step as a command line first."""
    kind = report["kind"]
    console.print(f"[bold]{escape(report['path'])}[/]: {escape(_head(report))}")
    facts = report.get("backend_facts")
    if facts:
        state = "usable here" if facts.get("usable") else "[yellow]not usable here[/]"
        console.print(f"backend {escape(facts['name'])}: {state} ({escape(str(facts.get('why', '')))})")
    check = report.get("int8_check")
    if check:
        before, after = check["before"], check["after"]
        kept = check["float_nodes"]
        console.print(
            f"INT8 check ({escape(str(check['runs_on']))}, {len(check['sizes'] or [])} sizes): agreement {before['pixel_agreement']:.4%} as "
            f"quantized"
            + (f", {after['pixel_agreement']:.4%} with {len(kept)} node(s) kept in float" if kept else "")
            + (
                f", {after['pixel_agreement']:.4%} with the biases of {check.get('corrected_convs', 0)} conv(s) corrected"
                if check.get("bias_correction") and not kept
                else ""
            )
            + (f" and the biases of {check.get('corrected_convs', 0)} conv(s) corrected" if check.get("bias_correction") and kept else "")
            + (f"; {check['int8_compute_share']:.1%} of the convolution work in INT8" if check.get("int8_compute_share") else "")
        )
        for name in kept:
            facts = check["sensitivity"].get(name) or {}
            detail = f" ({facts.get('op_type')}, introduced {facts['introduced']:.4f}, rel L2 {facts['rel_l2']:.4f})" if facts else ""
            console.print(f"  kept in float: {escape(name)}{detail}")
    if "parameters" in report:
        units = "layers" if kind == "checkpoint" else "nodes"
        console.print(f"{report['parameters'] / 1e6:.2f}M parameters, {report.get('nodes', '?')} {units}")
    console.print(_io_table(report))
    if report.get("probe") and report["probe"].get("input"):
        console.print(f"run in ONNX Runtime on a {'x'.join(map(str, report['probe']['input']))} synthetic image"
                      + (f": [red]{escape(report['probe']['error'])}[/]" if report["probe"].get("error") else ""))  # fmt: skip
    if report.get("op_types"):
        ops = ", ".join(f"{op} {count}" for op, count in list(report["op_types"].items())[:16])
        more = len(report["op_types"]) - 16
        console.print(f"{'layers' if kind == 'checkpoint' else 'ops'}: {escape(ops)}" + (f", ... ({more} more types)" if more > 0 else ""))
    _print_metadata(console, report)
    fit = report["fit"]
    colour = {"ready": "green", "adoptable": "yellow"}.get(fit["verdict"], "red")
    console.print(f"[{colour}]{fit['verdict']}[/]" + VERDICTS[fit["verdict"]])
    for problem in fit["problems"]:
        console.print(f"  [red]✗[/] {escape(problem)}")
    for note in fit["notes"]:
        console.print(f"  • {escape(note)}")
    if isinstance(fit.get("next"), str):
        console.print(f"next: {escape(fit['next'])}")


def _print_metadata(console: Console, report: dict[str, Any]) -> None:
    meta = report.get("metadata")
    if meta:
        names = ", ".join(meta["class_names"][:8]) + (", ..." if len(meta["class_names"]) > 8 else "")
        console.print(
            f"fcn-deploy metadata: {escape(meta['arch'])}, {meta['num_classes']} classes ({escape(names)}), mean {meta['mean']} "
            f"std {meta['std']}, min size {meta['min_size']}, precision {report.get('precision', '?')}"
        )
        if meta.get("adopted"):
            adopted = meta["adopted"]
            resize = " + bilinear resize" if adopted.get("resize") else ""
            console.print(escape(f"adopted from {adopted.get('source', '?')} (input {adopted['input']['name']!r}, "
                                 f"output {adopted['output']['name']!r}{resize})"))  # fmt: skip
    elif report["kind"] == "onnx":
        console.print("fcn-deploy metadata: none")
