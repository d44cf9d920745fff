"""The console view of the demo: a rule per step, each step's report as it comes, then the summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .bench import print_peaks, print_results
from .console import ConsoleListener
from .infer import print_summary as print_infer_summary
from .validation import print_validation


class DemoConsole(ConsoleListener):
    """The console listener, plus what the demo hands over step by step."""

    def result(self, kind: str, value: Any) -> None:
        if kind == "demo_step":
            self.console.rule(f"[bold]{escape(value)}")
        elif kind == "validation":
            print_validation(self.console, value)
        elif kind == "infer_summary":
            print_infer_summary(self.console, value)
        elif kind == "benchmark":
            print_results(self.console, value["results"])
            print_peaks(self.console, value)
        elif kind == "demo_summary":
            print_demo_summary(self.console, value.report, value.out, value.overlay)


def print_demo_summary(console: Console, report: dict[str, Any], out, overlay) -> None:
    summary = report["summary"]
    results = report["steps"]["benchmark"]["results"]
    h, w = summary["bench_size"]
    held_out = summary.get("held_out_mean_iu_by_engine", {})
    table = Table(title="fcn-deploy demo summary")
    columns = ("engine", "device", "validation", "min agreement", "mIU vs ref", "held-out mIU", f"median ms @{h}x{w}", "vs torch",
               "vs ORT fp32")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("engine", "device", "validation") else "right")
    for r in results:
        if r.get("baseline"):
            table.add_row(f"{r['backend']} eager {r['precision']} (reference)", r["device"], "-", "-", "-",
                          f"{summary['held_out_mean_iu']:.4f}", f"{r['median_ms']:.1f}", "1.00x", "-")  # fmt: skip
            continue
        val = summary["validation"][r["label"]]
        vs_ort = summary["vs_onnxruntime_fp32"].get(r["label"])
        iu = held_out.get(r["label"])
        table.add_row(
            f"{r['backend']} {r['precision']}", r["device"], "[green]passed[/]" if val["passed"] else "[red]FAILED[/]",
            f"{val['min_pixel_agreement'] * 100:.3f}%", f"{val.get('mean_iu_vs_reference', val['min_mean_iu']):.4f}",
            "-" if iu is None else f"{iu:.4f}", f"{r['median_ms']:.1f}", f"{r['speedup_vs_torch']:.2f}x",
            "-" if vs_ort is None else f"{vs_ort:.2f}x",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"held-out mean IU {summary['held_out_mean_iu']:.4f}; video ({summary['video_engine']}) {summary['video_fps']:.1f} fps "
        f"end to end ({summary['video_fps_ratio'] or float('nan'):.2f}x the engine's FPS inside the pipeline, "
        f"{summary['video_vs_standalone_engine']:.2f}x the engine alone)"
    )
    console.print(escape(f"overlay video: {overlay}\nreport: {out / 'report.json'}, page: {out / 'report.html'}  "
                         f"(total {report['seconds']['total']:.0f} s)"))  # fmt: skip
