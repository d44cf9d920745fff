"""The validation page: the verdict, "edges or regions?", the pictures and the per-size table.

The page answers "edges or regions?" on its first screen: the share of disagreeing pixels within
:data:`~fcn_deploy.validation.EDGE_RADIUS_PX` of a reference class boundary, the histogram of the
reference's top-1 minus top-2 margin at those pixels, then per size a row of pictures (input,
reference mask, engine mask, disagreement map coloured by that margin).  Pictures are drawn with
numpy and Pillow at their own pixels and shown with ``image-rendering: pixelated``, so a single
disagreeing pixel stays visible.

The per-size table has a column per metric: those the report says produced it (its ``metrics``
entry), else the registered :data:`~fcn_deploy.validation.METRICS`, so a page drawn from a saved
JSON shows that JSON's columns and adding a metric adds its column here with no edit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...data.images import colorize
from ...validation import EDGE_RADIUS_PX, MARGIN_BIN_EDGES, METRICS, Example, ExampleKeeper, Metric
from ...validation.metrics import format_value
from .page import Raw, esc, html_figure, html_page, mark, new_figure, num, pct, plot, png_uri, table

#: Pictures are shown at most this many pixels on their longest side (larger ones are reduced by an integer factor).
PICTURE_MAX_SIDE = 384
#: Small pictures are shown scaled up to this on their longest side.
PICTURE_MIN_SIDE = 256
#: Share of disagreeing pixels on edges above which the page says "edges", below which "regions".
EDGES_SAY_EDGES, EDGES_SAY_REGIONS = 0.8, 0.5
#: Disagreement-map colours, from a near-tie (benign) to a confident reference (suspicious), on a dark background.
MARGIN_COLOURS = ("#fff200", "#ff9a00", "#ff1e1e", "#ff3cff")
MARGIN_RANGE = (1e-3, 1e2)


# --------------------------------------------------------------------------- margin plots


def _margin_cmap():
    from matplotlib.colors import LinearSegmentedColormap, LogNorm

    return LinearSegmentedColormap.from_list("fcn-deploy-margin", MARGIN_COLOURS), LogNorm(*MARGIN_RANGE, clip=True)


def margin_histogram_plot(counts: Sequence[int], threshold: float | None) -> str:
    """Bars over the fixed log bins of the margins at disagreeing pixels, coloured as the maps are."""
    cmap, norm = _margin_cmap()
    edges = np.asarray(MARGIN_BIN_EDGES, dtype=float).copy()
    edges[0], edges[-1] = MARGIN_RANGE[0] / 10**0.25, MARGIN_RANGE[1] * 10**0.25  # show "below" and "beyond" bins
    counts = np.asarray(counts)
    centres = np.sqrt(edges[:-1] * edges[1:])
    figure = new_figure(5.6, 2.9)
    ax = figure.add_subplot()
    colours = [cmap(norm(c)) for c in centres]
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colours, edgecolor="#555", linewidth=0.4)
    ax.set_xscale("log")
    ax.set_xlim(edges[0], edges[-1])
    if threshold:
        ax.axvline(threshold, color="#1a5fb4", linestyle="--", linewidth=1.2)
        ax.text(threshold, ax.get_ylim()[1] * 0.95, f" confident above {threshold:g}", color="#1a5fb4", va="top", fontsize=8)
    ax.set_xlabel("reference margin, top-1 minus top-2 logit (first bar: < 0.001, last: > 100)", fontsize=8)
    ax.set_ylabel("disagreeing pixels", fontsize=8)
    ax.set_title(f"Reference margin at the {int(counts.sum()):,} disagreeing pixels", fontsize=9)
    ax.tick_params(labelsize=8)
    return plot(figure, "histogram of the reference margin at disagreeing pixels")


def margin_colour_key() -> str:
    """The disagreement map's colour bar."""
    from matplotlib.cm import ScalarMappable

    cmap, norm = _margin_cmap()
    figure = new_figure(3.2, 0.75)
    ax = figure.add_subplot()
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=ax, orientation="horizontal")
    bar.set_label("margin at a disagreeing pixel (low: near-tie)", fontsize=7)
    ax.tick_params(labelsize=7)
    return plot(figure, "colour key of the disagreement maps")


# --------------------------------------------------------------------------- pictures


def _reduce_factor(height: int, width: int) -> int:
    return max(1, math.ceil(max(height, width) / PICTURE_MAX_SIDE))


def _blocks(array: np.ndarray, factor: int, pad_value) -> np.ndarray:
    """``H x W (x C)`` -> ``h x w x factor*factor (x C)`` blocks (padded with ``pad_value``)."""
    h, w = array.shape[:2]
    ph, pw = -h % factor, -w % factor
    padded = np.pad(array, ((0, ph), (0, pw)) + ((0, 0),) * (array.ndim - 2), constant_values=pad_value)
    hb, wb = padded.shape[0] // factor, padded.shape[1] // factor
    blocks = padded.reshape(hb, factor, wb, factor, *array.shape[2:]).swapaxes(1, 2)
    return blocks.reshape(hb, wb, factor * factor, *array.shape[2:])


def _shown_size(height: int, width: int) -> tuple[int, int]:
    scale = max(1.0, PICTURE_MIN_SIDE / max(height, width))
    return round(height * scale), round(width * scale)


def _boundaries(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another class."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[1:] |= mask[1:] != mask[:-1]
    edge[:-1] |= mask[1:] != mask[:-1]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[:, :-1] |= mask[:, 1:] != mask[:, :-1]
    return edge


def disagreement_picture(reference: np.ndarray, engine: np.ndarray, margin: np.ndarray, palette, factor: int = 1) -> np.ndarray:
    """Dark map of the reference's regions (dimmed colours, boundaries in grey); each disagreeing
    pixel coloured by the reference's margin there.  Reduced by ``factor``, a block shows its most
    confident disagreement, so no disagreement disappears."""
    cmap, norm = _margin_cmap()
    base = (colorize(reference, palette).astype(np.float32) * 0.22 + 18).astype(np.uint8)
    base[_boundaries(reference)] = (120, 120, 120)
    wrong = reference != engine
    worst = np.where(wrong, np.nan_to_num(margin.astype(np.float32), posinf=MARGIN_RANGE[1]), -1.0)
    if factor > 1:
        base = base[::factor, ::factor]
        worst = _blocks(worst, factor, -1.0).max(axis=2)[: base.shape[0], : base.shape[1]]
    hit = worst >= 0
    colours = (cmap(norm(np.clip(worst[hit], MARGIN_RANGE[0], None)))[:, :3] * 255).astype(np.uint8)
    base[hit] = colours
    return base


def _example_row(example: Example, palette, threshold: float | None) -> str:
    h, w = example.image.shape[:2]
    factor = _reduce_factor(h, w)
    image = example.image
    if factor > 1:  # the mean of each block
        image = _blocks(image, factor, 0).mean(axis=2).astype(np.uint8)[: math.ceil(h / factor), : math.ceil(w / factor)]
    pictures = [
        (image, "input"),
        (colorize(example.reference_mask[::factor, ::factor], palette), "reference mask"),
        (colorize(example.engine_mask[::factor, ::factor], palette), "engine mask"),
        (disagreement_picture(example.reference_mask, example.engine_mask, example.margin, palette, factor), "disagreements"),
    ]
    shown_h, shown_w = _shown_size(*pictures[0][0].shape[:2])
    share = example.near_edge / example.disagreeing if example.disagreeing else 0.0
    near_ties = ""
    if threshold:
        wrong = example.reference_mask != example.engine_mask
        ties = int((example.margin[wrong].astype(np.float32) <= threshold).sum())
        near_ties = f", {ties / max(1, example.disagreeing) * 100:.1f}% near-ties (margin &le; {threshold:g})"
    status = "" if example.passed else f' &mdash; <span class="fail-mark">failed</span>: {esc("; ".join(example.failures))}'
    reduced = f" (shown reduced {factor}x; a block shows its most confident disagreement)" if factor > 1 else ""
    caption = (
        f"<p><b>{example.height}x{example.width}</b> {mark(example.passed)} size agreement {pct(example.case_agreement, 4)}; "
        f"this image {pct(example.pixel_agreement, 4)}: {example.disagreeing:,} disagreeing pixels, "
        f"<b>{share * 100:.1f}% on edges</b> (within {EDGE_RADIUS_PX} px of a reference boundary){near_ties}{status}{reduced}</p>"
    )
    figures = "".join(html_figure(png_uri(np.ascontiguousarray(p)), label, shown_w, shown_h) for p, label in pictures)
    return f'<div class="example">{caption}<div class="row">{figures}</div></div>'


def _legend(class_names: Sequence[str], palette) -> str:
    if not class_names or not palette:
        return ""
    items = "".join(
        f'<span class="swatch" style="background: rgb({c[0]},{c[1]},{c[2]})"></span>{esc(name)}' for name, c in zip(class_names, palette)
    )
    return f'<p class="muted">classes:{items}</p>'


# --------------------------------------------------------------------------- the answer and the table


def _edges_answer(share: float | None, disagreeing: int, near_ties: float | None) -> str:
    """The first-screen answer to "edges or regions?"."""
    if not disagreeing:
        return "<b class=\"big\">No disagreement.</b> The engine's masks equal the reference's at every validated pixel."
    where = f"of the {disagreeing:,} disagreeing pixels lie within {EDGE_RADIUS_PX} px of a reference class boundary"
    ties = ""
    if near_ties is not None:
        ties = f" {near_ties * 100:.1f}% are near-ties (reference margin at or below the confidence threshold)."
    if share is None:
        return f"{disagreeing:,} disagreeing pixels (this report does not say where they lie)."
    if share >= EDGES_SAY_EDGES:
        verdict = '<b class="big">Edges.</b> '
        meaning = " Object outlines moved by a pixel or two: what reduced precision does to a healthy engine."
    elif share < EDGES_SAY_REGIONS:
        verdict = '<b class="big">Regions.</b> '
        meaning = (" Most disagreements lie inside regions, where the reference is not at an edge: whole areas labelled "
                   "differently, as a broken layer or a preprocessing mismatch does. Look at the pictures below.")  # fmt: skip
    else:
        verdict = '<b class="big">Mixed: edges and regions.</b> '
        meaning = " Outline shifts and some region flips; the pictures below show which sizes have the regions."
    return f"{verdict}<b>{share * 100:.1f}%</b> {where}.{ties}{meaning}"


def _near_tie_share(keeper: ExampleKeeper | None, threshold: float | None) -> float | None:
    if keeper is None or threshold is None or not keeper.margin_counts.sum():
        return None
    upper = np.asarray(MARGIN_BIN_EDGES)[1:]
    return float(keeper.margin_counts[upper <= threshold * (1 + 1e-9)].sum() / keeper.margin_counts.sum())


@dataclass(frozen=True)
class MetricColumn:
    """A column of the per-size table: a metric's key in each case, its header and how it is written."""

    key: str
    label: str
    description: str = ""
    percent: bool = False
    digits: int = Metric.digits

    def format(self, value: float | None) -> str:
        if isinstance(value, float) and math.isnan(value):
            return "-"
        return format_value(value, percent=self.percent, digits=self.digits)


def metric_columns(report: dict) -> list[MetricColumn]:
    """The metrics that produced ``report`` and are shown as columns: its own ``metrics`` entry when
    it has one (a saved report keeps its columns whatever is registered now), else :data:`METRICS`.
    What an older entry does not record (``column``, ``digits``) comes from the registered metric."""
    described = report.get("metrics") or {key: metric.describe() for key, metric in METRICS.items()}
    columns = []
    for key, entry in described.items():
        registered = METRICS.get(key)
        if not entry.get("column", registered.column if registered else True):
            continue
        columns.append(MetricColumn(
            key, str(entry.get("label", key)), str(entry.get("description", "")), bool(entry.get("percent", False)),
            int(entry.get("digits", registered.digits if registered else Metric.digits)),
        ))  # fmt: skip
    return columns


def _case_table(cases: list[dict], columns: list[MetricColumn]) -> str:
    """One row per size: a mark, the size, a column per metric, then where the disagreements lie and why it failed."""
    rows = []
    for c in cases:
        disagreeing = c["pixels"] - c["agreeing"] if "pixels" in c and "agreeing" in c else None
        on_edges = c.get("disagree_near_edge")
        rows.append([
            mark(c["passed"]), f"{c.get('batch', 1)}x{c['height']}x{c['width']}", *(m.format(c.get(m.key)) for m in columns),
            "-" if disagreeing is None else f"{disagreeing:,}",
            "-" if not disagreeing or on_edges is None else f"{on_edges / disagreeing * 100:.1f}%",
            "; ".join(c.get("failures") or []),
        ])  # fmt: skip
    headers = [Raw(f'<span title="{esc(m.description)}">{esc(m.label)}</span>') if m.description else m.label for m in columns]
    return table(
        ["", "N x H x W", *headers, "disagreeing px", "on edges", "why it failed"], rows,
        numeric=set(range(2, 4 + len(columns))), row_class=lambda i: "" if cases[i]["passed"] else "failed",
    )  # fmt: skip


def _describe(t: dict) -> str:
    if not t:
        return "-"
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in t.items() if v is not None)


# --------------------------------------------------------------------------- the section and the page


def validation_section(report: dict, keeper: ExampleKeeper | None = None, level: int = 2, collapse_table: bool = False) -> str:
    """The verdict, "edges or regions?", the pictures and the per-size table of one validation report."""
    h = f"h{level}"
    cases = report.get("cases") or []
    summary = report.get("summary") or {}
    thresholds = report.get("thresholds") or {}
    threshold = thresholds.get("confidence_margin")
    if not cases:
        return (
            '<div class="verdict empty"><b>No sizes were validated</b>: this report has zero cases, so there is nothing to '
            "judge. Check the --sizes list and the engine's profile, then run validate again.</div>"
        )
    pixels = sum(c.get("pixels", 0) for c in cases)
    pooled = (
        f"{len(cases)} sizes, {pixels:,} pixels: agreement <b>{pct(summary.get('pixel_agreement'), 4)}</b>, "
        f"mean IU vs reference <b>{num(summary.get('mean_iu_vs_reference'), '.4f')}</b> (one confusion matrix over all sizes); "
        f"lowest per size {pct(summary.get('min_pixel_agreement'), 4)}"
    )
    if report.get("passed"):
        verdict = f'<div class="verdict pass"><b>PASSED</b> &mdash; {pooled}</div>'
    else:
        reasons = [f"<li>all sizes: {esc(f)}</li>" for f in report.get("failures") or []]
        reasons += [f"<li>{c['height']}x{c['width']}: {esc('; '.join(c.get('failures') or []))}</li>" for c in cases if not c["passed"]]
        where = f" at {len(report.get('failing_sizes') or [])} of {len(cases)} sizes" if report.get("failing_sizes") else ""
        verdict = f'<div class="verdict fail"><b>FAILED</b>{where} &mdash; {pooled}<ul>{"".join(reasons)}</ul></div>'
    disagreeing = summary.get("disagreeing_pixels", sum(c.get("pixels", 0) - c.get("agreeing", 0) for c in cases))
    answer = _edges_answer(summary.get("disagree_near_edge_share"), disagreeing, _near_tie_share(keeper, threshold))
    histogram = margin_histogram_plot(keeper.margin_counts, threshold) if keeper is not None and keeper.margin_counts.sum() else ""
    parts = [verdict, f"<{h}>Edges or regions?</{h}>", f'<div class="callout"><div class="answer">{answer}</div>{histogram}</div>']
    if keeper is not None:
        examples = keeper.examples
        parts.append(f"<{h}>Where the engine disagrees</{h}>")
        if examples:
            shown_failing = sum(not e.passed for e in examples)
            all_failing = sum(not c.get("passed", True) for c in cases)
            if not shown_failing:
                which = ""
            elif shown_failing == all_failing:
                which = " and every failing size"
            else:  # bounded memory: the worst failing sizes, and none without a disagreeing pixel
                which = f" and {shown_failing} of the {all_failing} failing sizes (the worst; see the table for all)"
            parts.append(
                f'<p class="muted">The {len(examples)} worst sizes by agreement{which} '
                "(the worst image of each batch): input, reference mask, engine mask, and a map of the disagreements "
                "over the reference's regions (grey lines: reference boundaries), coloured by the reference's "
                f"top-1 minus top-2 logit margin:</p><div>{margin_colour_key()}</div>"
                + _legend(report.get("class_names") or [], keeper.palette)
            )  # fmt: skip
            parts += [_example_row(e, keeper.palette, threshold) for e in examples]
        else:
            parts.append("<p>No size has a disagreeing pixel: nothing to show.</p>")
    parts += _int8_nodes(report.get("int8_check"), h)
    case_table = _case_table(cases, metric_columns(report))
    if collapse_table:
        parts.append(f"<details><summary>Per size ({len(cases)} sizes)</summary>{case_table}</details>")
    else:
        parts += [f"<{h}>Per size</{h}>", case_table]
    parts.append(f'<p class="muted">Thresholds: {esc(_describe(thresholds))}</p>')
    return "\n".join(parts)


def _int8_nodes(check: dict | None, h: str) -> list[str]:
    """What the INT8 build's check found: the nodes it kept in float, and the worst quantized nodes on this backend."""
    if not check:
        return []
    before, after = check.get("before") or {}, check.get("after") or {}
    kept = check.get("float_nodes") or []
    summary = (
        f"The build checked the compiled engine at {len(check.get('sizes') or [])} sizes of its own on {esc(check.get('inputs', ''))}: "
        f"agreement {pct(before.get('pixel_agreement'), 3)} as quantized"
        + (f", {pct(after.get('pixel_agreement'), 3)} with {len(kept)} node(s) kept in float ({esc(', '.join(kept))})" if kept else "")
        + (
            f"; {pct(check.get('int8_compute_share'), 1)} of the convolution work stays in INT8."
            if check.get("int8_compute_share")
            else "."
        )
    )
    rows = [[n["name"], n["op_type"], num(n["introduced"], ".4f"), num(n["rel_l2"], ".4f"), num(n["cosine"], ".5f"),
             mark(n["name"] in kept)] for n in check.get("worst_nodes") or []]  # fmt: skip
    parts = [f"<{h}>Which nodes break</{h}>", f"<p>{summary}</p>"]
    if rows:
        parts.append(
            '<p class="muted">Worst quantized nodes on this backend, by the error each introduces (its output\'s relative L2 error '
            "against FP32 minus the largest error of what it reads):</p>"
        )
        parts.append(table(["node", "op", "introduced", "rel L2", "cosine", "kept in float"], rows, numeric={2, 3, 4}))
    return parts


def validation_page(report: dict, keeper: ExampleKeeper | None = None) -> str:
    """The page of one validation report (``ValidationReport.to_dict()``), with ``keeper``'s pictures."""
    engine = Path(str(report.get("engine", "engine"))).name
    title = f"Validation: {engine}"
    sub = (
        f"{esc(report.get('backend', '?'))}, {esc(report.get('precision', '?'))} &middot; engine {esc(report.get('engine', '?'))} "
        f"&middot; reference {esc(report.get('reference', '?'))}"
    )
    return html_page(title, f'<h1>{esc(title)}</h1>\n<p class="sub">{sub}</p>\n{validation_section(report, keeper)}')
