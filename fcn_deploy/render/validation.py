"""The console view of a validation: one row per size (a column per metric), then the pooled verdict."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..validation import METRICS, CaseResult, Thresholds, ValidationReport
from ..validation.metrics import limit_names

#: What each arithmetic label means, for the printed verdict.
ARITHMETIC_NOTES = {
    "fp16-emulated": "FP16-rounded weights and casts, FP32 arithmetic: FP16 rounding of activations is not exercised",
    "bf16": "real reduced-precision arithmetic, coarser than FP16",
}
TICK, CROSS = "[green]✓[/]", "[red]✗[/]"


def describe_thresholds(thresholds: Thresholds) -> str:
    """The gates that are on, in words: ``minimum agreement (over all sizes) 0.99, ...``."""
    described = limit_names()
    parts = []
    for name, value in thresholds.items():
        if value is None or name not in described:
            continue
        parts.append(f"{described[name]} {value}")
    return ", ".join(parts)


def case_line(case: CaseResult) -> str:
    """One line per size, marked with a tick or a cross (export prints these)."""
    diff = f"max|Δ| {case.max_abs_logit_diff:.2e}  " if case.max_abs_logit_diff is not None else ""
    text = (
        f"{TICK if case.passed else CROSS} {case.batch}x3x{case.height}x{case.width}  {diff}mask agreement "
        f"{case.pixel_agreement * 100:.4f}%  confident {case.confident_agreement * 100:.3f}%  mIU {case.mean_iu:.4f}"
    )
    return text + (f"  [red]{escape('; '.join(case.failures))}[/]" if case.failures else "")


def title_of(report: ValidationReport) -> str:
    arithmetic = "" if report.arithmetic in ("", report.precision) else f", {report.arithmetic} arithmetic"
    return f"validate {Path(report.engine).name} ({report.backend}, {report.precision}{arithmetic}) vs {Path(report.reference).name}"


def print_plan(console: Console, sizes: list, thresholds: Thresholds) -> None:
    console.print(f"{len(sizes)} sizes; thresholds: {escape(describe_thresholds(thresholds))}")


def print_validation(console: Console, report: ValidationReport, title: str | None = None) -> None:
    """A table with one row per size (tick or cross, a column per metric), then the pooled verdict."""
    table = Table(title=escape(title or title_of(report)))
    metrics = [m for m in METRICS.values() if m.column]
    for column in ("", "N x H x W", *(m.label for m in metrics)):
        table.add_column(escape(column), justify="left" if column in ("", "N x H x W") else "right")
    for case in report.cases:
        values = case.values
        table.add_row(TICK if case.passed else CROSS, f"{case.batch}x{case.height}x{case.width}",
                      *(m.format(values.get(m.key)) for m in metrics))  # fmt: skip
    console.print(table)
    summary = report.summary()
    if not report.cases:
        console.print("[red]FAILED[/]: no sizes were validated")
        return
    pooled = (
        f"{summary['sizes']} sizes, {sum(c.pixels for c in report.cases):,} pixels: agreement {summary['pixel_agreement'] * 100:.4f}%, "
        f"mIU vs reference {summary['mean_iu_vs_reference']:.4f} (one confusion matrix over all sizes); "
        f"lowest per size {summary['min_pixel_agreement'] * 100:.4f}%"
    )
    if report.passed:
        console.print(f"[green]PASSED[/] {pooled}")
    else:
        for case in report.cases:
            if not case.passed:
                console.print(f"[red]✗ {case.height}x{case.width}[/]: {escape('; '.join(case.failures))}")
        for failure in report.failures:
            console.print(f"[red]✗ all sizes[/]: {escape(failure)}")
        where = (
            f" at {len(report.failing_sizes)} of {summary['sizes']} sizes: {', '.join(report.failing_sizes)}"
            if report.failing_sizes
            else ""
        )
        console.print(f"[red]FAILED[/]{where}; {pooled}")
    if report.arithmetic in ARITHMETIC_NOTES:
        console.print(f"arithmetic: {report.arithmetic}: {ARITHMETIC_NOTES[report.arithmetic]}")
