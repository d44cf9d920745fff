"""HTML pages for validate, benchmark and the demo: what an engineer looks at, in one file each.

Every page is **one self-contained HTML file**: no JavaScript, no CDN, no external file; plots are
SVG and pictures PNG/JPEG, all embedded as ``data:`` URIs, so a page opens offline, attaches to a
ticket or an e-mail, and renders the same years later.  The pages are built from the JSON report
dicts the commands already write, plus what JSON should not carry: the few validation images kept
by :class:`fcn_deploy.validation.ExampleKeeper` and, for the demo, frames of its videos.

Plots use **matplotlib**, drawn through ``matplotlib.figure.Figure`` objects (never pyplot, so no
GUI backend is ever chosen and the caller's pyplot state is untouched; it is the non-interactive
path matplotlib documents for servers) and saved as SVG: vector text and lines, crisp at any zoom,
20-60 kB per plot.  Plotly was the alternative: interactive zoom, but every page would have to
inline plotly.js (~3.5 MB) to work offline, it needs JavaScript to show anything, and it would be a
new dependency, where matplotlib is a plain wheel on every desktop OS.  Pictures (inputs, masks,
disagreement maps) are drawn with numpy and Pillow at their own pixels and shown with
``image-rendering: pixelated``, so a single disagreeing pixel stays visible.

The validation page answers "edges or regions?" on its first screen: the share of disagreeing
pixels within :data:`~fcn_deploy.validation.EDGE_RADIUS_PX` of a reference class boundary, the
histogram of the reference's top-1 minus top-2 margin at those pixels, then per size a row of
pictures (input, reference mask, engine mask, disagreement map coloured by that margin).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import __version__
from .data.images import colorize
from .errors import FcnDeployError
from .fileio import atomic_write_bytes
from .validation import EDGE_RADIUS_PX, MARGIN_BIN_EDGES, Example, ExampleKeeper

#: Pictures are shown at most this many pixels on their longest side (larger ones are reduced by an integer factor).
PICTURE_MAX_SIDE = 384
#: Small pictures are shown scaled up to this on their longest side.
PICTURE_MIN_SIDE = 256
#: Share of disagreeing pixels on edges above which the page says "edges", below which "regions".
EDGES_SAY_EDGES, EDGES_SAY_REGIONS = 0.8, 0.5
#: Disagreement-map colours, from a near-tie (benign) to a confident reference (suspicious), on a dark background.
MARGIN_COLOURS = ("#fff200", "#ff9a00", "#ff1e1e", "#ff3cff")
MARGIN_RANGE = (1e-3, 1e2)
#: How many frames of the demo's video the page shows, and at least how wide.
VIDEO_FRAMES_SHOWN, VIDEO_MIN_WIDTH = 3, 360

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto; max-width: 1320px;
       padding: 0 16px; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #555; margin-top: 0; } .muted { color: #666; font-size: 0.9em; }
.verdict { padding: 10px 14px; border-radius: 6px; margin: 12px 0; }
.verdict.pass { background: #e8f6ec; border-left: 6px solid #1a9e4a; }
.verdict.fail { background: #fdecec; border-left: 6px solid #d42a2a; }
.verdict.empty { background: #fff6e0; border-left: 6px solid #e0a000; }
.pass-mark { color: #1a9e4a; font-weight: bold; } .fail-mark { color: #d42a2a; font-weight: bold; }
.callout { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
.callout .answer { flex: 1 1 380px; font-size: 1.05em; } .answer b.big { font-size: 1.35em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #d9d9d9; padding: 4px 8px; } th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.failed td { background: #fff1f1; }
.row { display: flex; gap: 10px; flex-wrap: wrap; align-items: flex-end; margin: 6px 0 18px; }
figure { margin: 0; } figcaption { font-size: 0.8em; color: #444; text-align: center; }
img.px { image-rendering: pixelated; border: 1px solid #ccc; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #888; margin: 0 4px 0 10px; vertical-align: -1px; }
details { margin: 8px 0; } summary { cursor: pointer; color: #234; }
footer { margin-top: 40px; color: #888; font-size: 0.8em; }
"""


# --------------------------------------------------------------------------- files


def check_page_path(path: str | Path, overwrite: bool = False, flag: str = "--html") -> Path:
    """Refuse a page path before any work starts: a missing folder, a folder given as the page, or
    an existing file without ``--overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise FcnDeployError(f"{flag} {path} is a folder; give a file name such as {path / 'report.html'}")
    folder = path.parent
    if not folder.is_dir():
        raise FcnDeployError(f"{flag} {path}: folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise FcnDeployError(f"{flag} {path}: folder {folder} is not writable; choose another path")
    if path.exists() and not overwrite:
        raise FcnDeployError(f"{flag} {path} already exists; pass --overwrite or choose another path")
    return path


def write_page(path: str | Path, page: str) -> Path:
    """Write a page atomically (never half-written under its final name)."""
    return atomic_write_bytes(path, page.encode("utf-8"))


# --------------------------------------------------------------------------- HTML helpers


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _page(title: str, body: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
        f"<footer>fcn-deploy {_esc(__version__)} &middot; written {_esc(stamp)} &middot; one self-contained file: "
        "no scripts, nothing fetched</footer>\n</body>\n</html>\n"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: set[int] = frozenset(), row_class=None) -> str:
    """A table; cells are escaped unless given as ``_Raw``."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        cls = f' class="{row_class(index)}"' if row_class and row_class(index) else ""
        cells = "".join(
            f'<td{" class=num" if i in numeric else ""}>{cell if isinstance(cell, _Raw) else _esc(cell)}</td>'
            for i, cell in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw(str):
    """HTML that is already safe."""


def _mark(passed: bool) -> _Raw:
    return _Raw('<span class="pass-mark">&#10003;</span>' if passed else '<span class="fail-mark">&#10007;</span>')


def _pct(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", optimize=True)
    return _data_uri(buffer.getvalue(), "image/png")


def _jpeg(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=85)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _img(uri: str, alt: str, width: int, height: int, pixelated: bool = True) -> str:
    cls = ' class="px"' if pixelated else ""
    return f'<img{cls} src="{uri}" alt="{_esc(alt)}" width="{width}" height="{height}">'


def _figure(uri: str, caption: str, width: int, height: int, pixelated: bool = True) -> str:
    style = f' style="width: {max(width, 96)}px"'  # the caption wraps under its picture
    return f"<figure{style}>{_img(uri, caption, width, height, pixelated)}<figcaption>{_esc(caption)}</figcaption></figure>"


# --------------------------------------------------------------------------- plots (matplotlib, SVG)


def _new_figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    return figure


def _svg(figure) -> str:
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "fcn-deploy"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return _data_uri(buffer.getvalue(), "image/svg+xml")


def _plot(figure, alt: str) -> str:
    width, height = (round(v * 96) for v in figure.get_size_inches())
    return f'<img src="{_svg(figure)}" alt="{_esc(alt)}" width="{width}" height="{height}">'


def _margin_cmap():
    from matplotlib.colors import LinearSegmentedColormap, LogNorm

    return LinearSegmentedColormap.from_list("fcn-deploy-margin", MARGIN_COLOURS), LogNorm(*MARGIN_RANGE, clip=True)


def margin_histogram_plot(counts: Sequence[int], threshold: float | None) -> str:
    """Bars over the fixed log bins of the margins at disagreeing pixels, coloured as the maps are."""
    cmap, norm = _margin_cmap()
    edges = np.asarray(MARGIN_BIN_EDGES, dtype=float).copy()
    edges[0], edges[-1] = MARGIN_RANGE[0] / 10 ** 0.25, MARGIN_RANGE[1] * 10 ** 0.25  # show "below" and "beyond" bins
    counts = np.asarray(counts)
    centres = np.sqrt(edges[:-1] * edges[1:])
    figure = _new_figure(5.6, 2.9)
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
    return _plot(figure, "histogram of the reference margin at disagreeing pixels")


def margin_colour_key() -> str:
    """The disagreement map's colour bar."""
    from matplotlib.cm import ScalarMappable

    cmap, norm = _margin_cmap()
    figure = _new_figure(3.2, 0.75)
    ax = figure.add_subplot()
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=ax, orientation="horizontal")
    bar.set_label("margin at a disagreeing pixel (low: near-tie)", fontsize=7)
    ax.tick_params(labelsize=7)
    return _plot(figure, "colour key of the disagreement maps")


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
    status = "" if example.passed else f" &mdash; <span class=\"fail-mark\">failed</span>: {_esc('; '.join(example.failures))}"
    reduced = f" (shown reduced {factor}x; a block shows its most confident disagreement)" if factor > 1 else ""
    caption = (
        f"<p><b>{example.height}x{example.width}</b> {_mark(example.passed)} size agreement {_pct(example.case_agreement, 4)}; "
        f"this image {_pct(example.pixel_agreement, 4)}: {example.disagreeing:,} disagreeing pixels, "
        f"<b>{share * 100:.1f}% on edges</b> (within {EDGE_RADIUS_PX} px of a reference boundary){near_ties}{status}{reduced}</p>"
    )
    figures = "".join(_figure(_png(np.ascontiguousarray(p)), label, shown_w, shown_h) for p, label in pictures)
    return f'<div class="example">{caption}<div class="row">{figures}</div></div>'


def _legend(class_names: Sequence[str], palette) -> str:
    if not class_names or not palette:
        return ""
    items = "".join(
        f'<span class="swatch" style="background: rgb({c[0]},{c[1]},{c[2]})"></span>{_esc(name)}'
        for name, c in zip(class_names, palette)
    )
    return f'<p class="muted">classes:{items}</p>'


# --------------------------------------------------------------------------- validate


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
        verdict = "<b class=\"big\">Edges.</b> "
        meaning = " Object outlines moved by a pixel or two: what reduced precision does to a healthy engine."
    elif share < EDGES_SAY_REGIONS:
        verdict = "<b class=\"big\">Regions.</b> "
        meaning = (" Most disagreements lie inside regions, where the reference is not at an edge: whole areas labelled "
                   "differently, as a broken layer or a preprocessing mismatch does. Look at the pictures below.")  # fmt: skip
    else:
        verdict = "<b class=\"big\">Mixed: edges and regions.</b> "
        meaning = " Outline shifts and some region flips; the pictures below show which sizes have the regions."
    return f"{verdict}<b>{share * 100:.1f}%</b> {where}.{ties}{meaning}"


def _near_tie_share(keeper: ExampleKeeper | None, threshold: float | None) -> float | None:
    if keeper is None or threshold is None or not keeper.margin_counts.sum():
        return None
    upper = np.asarray(MARGIN_BIN_EDGES)[1:]
    return float(keeper.margin_counts[upper <= threshold * (1 + 1e-9)].sum() / keeper.margin_counts.sum())


def _case_rows(cases: list[dict]) -> list[list[Any]]:
    rows = []
    for c in cases:
        disagreeing = c["pixels"] - c["agreeing"] if "pixels" in c and "agreeing" in c else None
        on_edges = c.get("disagree_near_edge")
        rows.append([
            _mark(c["passed"]), f"{c.get('batch', 1)}x{c['height']}x{c['width']}", _pct(c["pixel_agreement"], 4),
            _pct(c.get("confident_agreement")), _num(c.get("max_disagree_margin")), _num(c.get("mean_iu"), ".4f"),
            _num(c.get("max_abs_logit_diff")), "-" if disagreeing is None else f"{disagreeing:,}",
            "-" if not disagreeing or on_edges is None else f"{on_edges / disagreeing * 100:.1f}%",
            "; ".join(c.get("failures") or []),
        ])  # fmt: skip
    return rows


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
        f"{len(cases)} sizes, {pixels:,} pixels: agreement <b>{_pct(summary.get('pixel_agreement'), 4)}</b>, "
        f"mean IU vs reference <b>{_num(summary.get('mean_iu_vs_reference'), '.4f')}</b> (one confusion matrix over all sizes); "
        f"lowest per size {_pct(summary.get('min_pixel_agreement'), 4)}"
    )
    if report.get("passed"):
        verdict = f'<div class="verdict pass"><b>PASSED</b> &mdash; {pooled}</div>'
    else:
        reasons = [f"<li>all sizes: {_esc(f)}</li>" for f in report.get("failures") or []]
        reasons += [f"<li>{c['height']}x{c['width']}: {_esc('; '.join(c.get('failures') or []))}</li>" for c in cases if not c["passed"]]
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
    table = _table(
        ["", "N x H x W", "agreement", "confident", "max disagree margin", "mIU vs ref", "max |Δlogit|", "disagreeing px",
         "on edges", "why it failed"],
        _case_rows(cases), numeric={2, 3, 4, 5, 6, 7, 8}, row_class=lambda i: "" if cases[i]["passed"] else "failed",
    )  # fmt: skip
    if collapse_table:
        parts.append(f"<details><summary>Per size ({len(cases)} sizes)</summary>{table}</details>")
    else:
        parts += [f"<{h}>Per size</{h}>", table]
    parts.append(f'<p class="muted">Thresholds: {_esc(_describe(thresholds))}</p>')
    return "\n".join(parts)


def _describe(t: dict) -> str:
    if not t:
        return "-"
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in t.items() if v is not None)


def validation_page(report: dict, keeper: ExampleKeeper | None = None) -> str:
    engine = Path(str(report.get("engine", "engine"))).name
    title = f"Validation: {engine}"
    sub = (
        f"{_esc(report.get('backend', '?'))}, {_esc(report.get('precision', '?'))} &middot; engine {_esc(report.get('engine', '?'))} "
        f"&middot; reference {_esc(report.get('reference', '?'))}"
    )
    return _page(title, f"<h1>{_esc(title)}</h1>\n<p class=\"sub\">{sub}</p>\n{validation_section(report, keeper)}")


# --------------------------------------------------------------------------- benchmark


def _series_names(results: list[dict]) -> dict[tuple[str, str], str]:
    """One display name per (engine, device): ``backend precision``, the file added where two share it."""
    names: dict[tuple[str, str], str] = {}
    for r in results:
        key = (str(r.get("engine", r.get("label"))), str(r.get("device", "")))
        if key not in names:
            torch = r.get("backend") == "torch"
            names[key] = f"torch eager fp32 ({r.get('device', 'cpu')})" if torch else f"{r.get('backend')} {r.get('precision')}"
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: (n if counts[n] == 1 else f"{n} ({Path(k[0]).name})") for k, n in names.items()}


def _key(r: dict) -> tuple[str, str]:
    return str(r.get("engine", r.get("label"))), str(r.get("device", ""))


def _colours(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _grouped_bars(results: list[dict], names: dict, colours: dict, value: str, title: str, ylabel: str, errors: bool = False,
                  baseline: float | None = None) -> str:  # fmt: skip
    """Bars per series, grouped by size (and batch where several were measured)."""
    groups = sorted({(r["batch"], r["height"], r["width"]) for r in results}, key=lambda g: (g[1] * g[2], g[0]))
    several_batches = len({g[0] for g in groups}) > 1
    series = list(dict.fromkeys(_key(r) for r in results))
    by = {(_key(r), (r["batch"], r["height"], r["width"])): r for r in results}
    width = 0.8 / max(1, len(series))
    figure = _new_figure(min(12.5, 2.2 + 0.45 * len(series) * len(groups) + 0.6 * len(groups)), 3.6)
    ax = figure.add_subplot()
    for index, key in enumerate(series):
        xs, ys, low, high = [], [], [], []
        for g_index, group in enumerate(groups):
            r = by.get((key, group))
            if r is None or r.get(value) is None:
                continue
            xs.append(g_index - 0.4 + width * (index + 0.5))
            ys.append(r[value])
            low.append(max(0.0, r[value] - r.get("p10_ms", r[value])))
            high.append(max(0.0, r.get("p90_ms", r[value]) - r[value]))
        if xs:
            ax.bar(xs, ys, width=width * 0.92, color=colours[key], label=names[key],
                   yerr=[low, high] if errors else None, capsize=3 if errors else 0, error_kw={"linewidth": 1})  # fmt: skip
    if baseline is not None:
        ax.axhline(baseline, color="#444", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), [f"{b}x{h}x{w}" if several_batches else f"{h}x{w}" for b, h, w in groups], fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _plot(figure, title)


def _throughput_vs_batch(results: list[dict], names: dict, colours: dict) -> str:
    sizes = sorted({(r["height"], r["width"]) for r in results}, key=lambda s: s[0] * s[1])[:4]
    series = list(dict.fromkeys(_key(r) for r in results))
    figure = _new_figure(min(12.5, 3.4 * len(sizes) + 1.8), 3.2)
    axes = figure.subplots(1, len(sizes), squeeze=False)[0]
    for ax, (h, w) in zip(axes, sizes):
        for key in series:
            points = sorted((r["batch"], r["throughput_fps"]) for r in results if _key(r) == key and (r["height"], r["width"]) == (h, w))
            if points:
                ax.plot(*zip(*points), marker="o", color=colours[key], label=names[key])
        ax.set_title(f"{h}x{w}", fontsize=9)
        ax.set_xlabel("batch", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("images / s", fontsize=8)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _plot(figure, "throughput vs batch")


def _memory_plot(results: list[dict], names: dict, colours: dict) -> str:
    series = list(dict.fromkeys(_key(r) for r in results if r.get("peak_memory_mb") is not None))
    peaks = [max(r["peak_memory_mb"] for r in results if _key(r) == key and r.get("peak_memory_mb") is not None) for key in series]
    figure = _new_figure(6.5, 0.6 + 0.32 * len(series))
    ax = figure.add_subplot()
    ax.barh(range(len(series)), peaks, color=[colours[k] for k in series])
    ax.set_yticks(range(len(series)), [names[k] for k in series], fontsize=8)
    ax.invert_yaxis()
    kinds = {r.get("memory_kind") for r in results} - {None}
    ax.set_xlabel("MB (" + ", ".join(sorted(k.replace("_", " ") for k in kinds)) + ")" if kinds else "MB", fontsize=8)
    ax.tick_params(labelsize=8)
    return _plot(figure, "peak memory")


def benchmark_section(report: dict, level: int = 2) -> str:
    """Latency with p10-p90 bars, speed-up, throughput vs batch (where measured), memory and the table."""
    h = f"h{level}"
    results = [r for r in report.get("results") or [] if r.get("median_ms") is not None]
    if not results:
        return '<div class="verdict empty"><b>No results</b>: this benchmark report timed nothing.</div>'
    names = _series_names(results)
    series = list(dict.fromkeys(_key(r) for r in results))
    colours = dict(zip(series, _colours(len(series))))  # one colour per engine on every plot
    parts = []
    settings, machine = report.get("settings") or {}, report.get("machine") or {}
    how = [f"{settings['warmup']} warm-up + {settings['iters']} timed runs per engine and size" if "iters" in settings else "",
           settings.get("isolation", ""), settings.get("order", ""),
           f"{machine['cpu_count']} CPUs, threads {machine.get('threads', '?')}" if "cpu_count" in machine else ""]  # fmt: skip
    if any(how):
        parts.append(f'<p class="muted">{_esc("; ".join(filter(None, how)))}.</p>')
    parts.append(f"<{h}>Latency</{h}>")
    parts.append(
        _grouped_bars(results, names, colours, "median_ms", "Median latency per engine (bars: p10-p90)", "ms per batch", errors=True)
    )
    engines = [r for r in results if r.get("backend") != "torch" and r.get("speedup_vs_torch") is not None]
    if engines:
        parts.append(f"<{h}>Speed-up over PyTorch eager FP32</{h}>")
        title = "Speed-up over the baseline (median; dashed: 1x)"
        parts.append(_grouped_bars(engines, names, colours, "speedup_vs_torch", title, "x faster", baseline=1.0))
    parts.append(f"<{h}>Throughput vs batch</{h}>")
    if len({r["batch"] for r in results}) > 1:
        parts.append(_throughput_vs_batch(results, names, colours))
    else:
        parts.append(f'<p class="muted">One batch size was measured (batch {results[0]["batch"]}); '
                     "throughput at it is in the table below.</p>")  # fmt: skip
    if any(r.get("peak_memory_mb") is not None for r in results):
        parts.append(f"<{h}>Memory</{h}>")
        parts.append(_memory_plot(results, names, colours))
    rows = [
        [names[_key(r)], r.get("device", "-"), f"{r['batch']}x{r['height']}x{r['width']}", f"{r['median_ms']:.2f}",
         f"{r.get('p10_ms', r['median_ms']):.2f}-{r.get('p90_ms', r['median_ms']):.2f}", _num(r.get("throughput_fps"), ".2f"),
         "-" if r.get("speedup_vs_torch") is None else f"{r['speedup_vs_torch']:.2f}x", _num(r.get("peak_memory_mb"), ".0f"),
         "-" if r.get("backend") == "torch" else Path(str(r.get("engine", ""))).name]
        for r in results
    ]  # fmt: skip
    parts += [f"<{h}>All results</{h}>", _table(["engine", "device", "N x H x W", "median ms", "p10-p90 ms", "images/s",
                                                 "vs torch", "peak MB", "file"], rows, numeric={3, 4, 5, 6, 7})]  # fmt: skip
    return "\n".join(parts)


def benchmark_page(report: dict) -> str:
    results = report.get("results") or []
    sizes = sorted({f"{r.get('height')}x{r.get('width')}" for r in results})
    sub = f"{len({_key(r) for r in results})} contenders at {', '.join(sizes) or 'no size'}; baseline: PyTorch eager FP32"
    baseline = (report.get("baseline") or {}).get("checkpoint")
    if baseline:
        sub += f" ({_esc(baseline)})"
    return _page("Benchmark", f"<h1>Benchmark</h1>\n<p class=\"sub\">{_esc(sub)}</p>\n{benchmark_section(report)}")


# --------------------------------------------------------------------------- demo


def video_frames(path: str | Path, count: int = VIDEO_FRAMES_SHOWN, max_width: int = 480) -> list[tuple[int, np.ndarray]]:
    """``count`` frames spread over a video, as (index, RGB) pairs, reduced to ``max_width``."""
    import av

    path = Path(path)
    if not path.is_file():
        return []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames or sum(1 for _ in container.decode(stream))
    if not total:
        return []
    wanted = sorted({round(i * (total - 1) / max(1, count - 1)) for i in range(count)}) if count > 1 else [0]
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                picture = frame.to_image()
                if picture.width > max_width:
                    picture = picture.resize((max_width, round(picture.height * max_width / picture.width)), Image.BILINEAR)
                frames.append((index, np.asarray(picture.convert("RGB"))))
            if index >= wanted[-1]:
                break
    return frames


def _video_section(source: Path | None, overlay: Path | None) -> str:
    if overlay is None or not Path(overlay).is_file():
        return "<p>No overlay video was written.</p>"
    overlay_frames = video_frames(overlay)
    source_frames = dict(video_frames(source)) if source is not None else {}
    rows = []
    for index, picture in overlay_frames:
        h, w = picture.shape[:2]
        if w < VIDEO_MIN_WIDTH:  # small frames are shown larger (the browser scales them smoothly)
            h, w = round(h * VIDEO_MIN_WIDTH / w), VIDEO_MIN_WIDTH
        row = [_figure(_jpeg(picture), f"overlay, frame {index}", w, h, pixelated=False)]
        if index in source_frames:
            row.insert(0, _figure(_jpeg(source_frames[index]), f"source, frame {index}", w, h, pixelated=False))
        rows.append(f'<div class="row">{"".join(row)}</div>')
    return f'<p class="muted">{_esc(Path(overlay).name)}: frames beside their source frames.</p>' + "".join(rows)


def _class_iu_plot(class_names: Sequence[str], per_class_iu: Sequence[float], palette) -> str:
    figure = _new_figure(min(12.0, 1.6 + 0.55 * len(class_names)), 2.8)
    ax = figure.add_subplot()
    values = [0.0 if v is None or v != v else v for v in per_class_iu]
    colours = [tuple(c / 255 for c in palette[i]) if palette and i < len(palette) else "#4477aa" for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colours, edgecolor="#333", linewidth=0.5)
    many = len(values) > 8
    ax.set_xticks(range(len(values)), list(class_names), fontsize=8, rotation=30 if many else 0, ha="right" if many else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IU", fontsize=8)
    ax.set_title("Held-out IU per class", fontsize=9)
    ax.tick_params(labelsize=8)
    return _plot(figure, "held-out IU per class")


def demo_page(report: dict, keepers: dict[str, ExampleKeeper] | None = None, video: Path | None = None,
              overlay: Path | None = None, palette: Sequence[Sequence[int]] | None = None) -> str:  # fmt: skip
    """The demo's page: summary, held-out accuracy, every engine's validation, the benchmark and video frames."""
    keepers = keepers or {}
    steps, summary = report.get("steps") or {}, report.get("summary") or {}
    validations = steps.get("validate") or {}
    results = (steps.get("benchmark") or {}).get("results") or []
    passed = report.get("passed")
    body = ["<h1>fcn-deploy demo</h1>", f'<p class="sub">output folder {_esc(report.get("out", "?"))} &middot; '
            f'total {report.get("seconds", {}).get("total", 0):.0f} s</p>']  # fmt: skip
    verdict_class = "pass" if passed else "fail"
    failed = [label for label, v in validations.items() if not v.get("passed")]
    body.append(f'<div class="verdict {verdict_class}"><b>{"PASSED" if passed else "FAILED"}</b> &mdash; '
                f'{len(validations) - len(failed)} of {len(validations)} engines validated'
                + (f'; failed: {_esc(", ".join(failed))}' if failed else "") + "</div>")  # fmt: skip

    body.append("<h2>Summary</h2>")
    size = summary.get("bench_size") or ([results[0]["height"], results[0]["width"]] if results else ["?", "?"])
    if not any([r["height"], r["width"]] == list(size) for r in results) and results:
        size = [results[0]["height"], results[0]["width"]]
    rows = []
    for r in (r for r in results if [r["height"], r["width"]] == list(size)):
        if r.get("backend") == "torch":
            rows.append(["torch eager fp32 (reference)", r.get("device", "-"), "-", "-", "-", "-", f"{r['median_ms']:.1f}", "1.00x", "-"])
            continue
        v = validations.get(r.get("label"), {})
        vs = v.get("summary") or {}
        vs_ort = (summary.get("vs_onnxruntime_fp32") or {}).get(r.get("label"))
        share = vs.get("disagree_near_edge_share")
        rows.append([
            f"{r.get('backend')} {r.get('precision')}", r.get("device", "-"), _mark(bool(v.get("passed"))),
            _pct(vs.get("pixel_agreement"), 4), _num(vs.get("mean_iu_vs_reference"), ".4f"),
            "-" if share is None else f"{share * 100:.0f}%", f"{r['median_ms']:.1f}",
            "-" if r.get("speedup_vs_torch") is None else f"{r['speedup_vs_torch']:.2f}x", "-" if vs_ort is None else f"{vs_ort:.2f}x",
        ])  # fmt: skip
    body.append(_table(["engine", "device", "valid", "agreement", "mIU vs ref", "disagreements on edges",
                        f"median ms @{size[0]}x{size[1]}", "vs torch", "vs ORT fp32"], rows, numeric={3, 4, 5, 6, 7, 8}))  # fmt: skip
    if summary.get("video_fps") is not None:
        body.append(
            f"<p>Video ({_esc(summary.get('video_engine'))}): <b>{summary['video_fps']:.1f} fps</b> end to end"
            + (f", {summary['video_fps_ratio']:.2f}x the engine's rate inside the pipeline" if summary.get("video_fps_ratio") else "")
            + "</p>"
        )

    evaluation = steps.get("eval") or {}
    body.append("<h2>Held-out accuracy</h2>")
    if evaluation.get("per_class_iu"):
        names = evaluation.get("class_names") or [str(i) for i in range(len(evaluation["per_class_iu"]))]
        body.append(
            f"<p>{_esc(evaluation.get('split', 'held-out split'))}: mean IU <b>{_num(evaluation.get('mean_iu'), '.4f')}</b>, "
            f"pixel accuracy {_num(evaluation.get('pixel_accuracy'), '.4f')}, "
            f"mean accuracy {_num(evaluation.get('mean_accuracy'), '.4f')}, f.w. IU {_num(evaluation.get('fw_iu'), '.4f')}</p>"
        )
        body.append(f'<div class="row">{_class_iu_plot(names, evaluation["per_class_iu"], palette)}'
                    + _table(["class", "IU"], [[n, _num(v, ".4f")] for n, v in zip(names, evaluation["per_class_iu"])], numeric={1})
                    + "</div>")  # fmt: skip
    else:
        body.append("<p>No evaluation in this report.</p>")

    body.append("<h2>Validation</h2>")
    if not validations:
        body.append('<div class="verdict empty"><b>No engine was validated.</b></div>')
    for label, validation in validations.items():
        body.append(f'<h3 id="validate-{_esc(label)}">{_esc(label)}</h3>')
        body.append(validation_section(validation, keepers.get(label), level=4, collapse_table=True))

    body.append("<h2>Benchmark</h2>")
    body.append(benchmark_section(steps.get("benchmark") or {}, level=3))

    body.append("<h2>Video</h2>")
    body.append(_video_section(video, overlay))
    return _page("fcn-deploy demo", "\n".join(body))
