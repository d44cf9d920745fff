"""What every page shares: the document and its style, tables and marks, embedded pictures and plots,
and checking and writing the page file.

Every page is **one self-contained HTML file**: no JavaScript, no CDN, no external file; plots are
SVG and pictures PNG/JPEG, all embedded as ``data:`` URIs, so a page opens offline, attaches to a
ticket or an e-mail, and renders the same years later.

Plots use **matplotlib**, drawn through ``matplotlib.figure.Figure`` objects (never pyplot, so no
GUI backend is ever chosen and the caller's pyplot state is untouched; it is the non-interactive
path matplotlib documents for servers) and saved as SVG: vector text and lines, crisp at any zoom.
Plotly was the alternative: interactive zoom, but every page would have to inline plotly.js to work
offline, it needs JavaScript to show anything, and it would be a new dependency, where matplotlib
is a plain wheel on every desktop OS.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ... import __version__
from ...errors import FcnDeployError
from ...fileio import atomic_write_bytes

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


def check_page_path(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse a page path before any work starts: a missing folder, a folder given as the page, or
    an existing file unless ``overwrite``.  Errors name the ``html`` option (and ``overwrite``)."""
    path = Path(path)
    if path.is_dir():
        raise FcnDeployError(f"{path} is a folder; give a file name such as {path / 'report.html'}", options=("html",))
    folder = path.parent
    if not folder.is_dir():
        raise FcnDeployError(f"{path}: folder {folder} does not exist; create it or choose another path", options=("html",))
    if not os.access(folder, os.W_OK):
        raise FcnDeployError(f"{path}: folder {folder} is not writable; choose another path", options=("html",))
    if path.exists() and not overwrite:
        raise FcnDeployError(f"{path} already exists; overwrite it or choose another path", options=("html", "overwrite"))
    return path


def write_page(path: str | Path, page: str) -> Path:
    """Write a page atomically (never half-written under its final name)."""
    return atomic_write_bytes(path, page.encode("utf-8"))


# --------------------------------------------------------------------------- HTML


class Raw(str):
    """HTML that is already safe (a table cell given as ``Raw`` is not escaped)."""


def esc(value: Any) -> str:
    return html.escape(str(value))


def html_page(title: str, body: str) -> str:
    """The whole document: head, style, ``body`` and the footer (version, time written)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
        f"<footer>fcn-deploy {esc(__version__)} &middot; written {esc(stamp)} &middot; one self-contained file: "
        "no scripts, nothing fetched</footer>\n</body>\n</html>\n"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Collection[int] = frozenset(),
          row_class: Callable[[int], str] | None = None) -> str:  # fmt: skip
    """A table; headers and cells are escaped unless given as :class:`Raw`; columns in ``numeric`` align right."""
    head = "".join(f"<th>{h if isinstance(h, Raw) else esc(h)}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        cls = f' class="{row_class(index)}"' if row_class and row_class(index) else ""
        cells = "".join(
            f"<td{' class=num' if i in numeric else ''}>{cell if isinstance(cell, Raw) else esc(cell)}</td>" for i, cell in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def mark(passed: bool) -> Raw:
    """A green tick or a red cross."""
    return Raw('<span class="pass-mark">&#10003;</span>' if passed else '<span class="fail-mark">&#10007;</span>')


def pct(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def num(value: float | None, fmt: str = ".3g") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


# --------------------------------------------------------------------------- pictures


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", optimize=True)
    return data_uri(buffer.getvalue(), "image/png")


def jpeg_uri(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def img(uri: str, alt: str, width: int, height: int, pixelated: bool = True) -> str:
    cls = ' class="px"' if pixelated else ""
    return f'<img{cls} src="{uri}" alt="{esc(alt)}" width="{width}" height="{height}">'


def html_figure(uri: str, caption: str, width: int, height: int, pixelated: bool = True) -> str:
    """A picture with its caption under it (``pixelated``: shown at its own pixels, never smoothed)."""
    style = f' style="width: {max(width, 96)}px"'  # the caption wraps under its picture
    return f"<figure{style}>{img(uri, caption, width, height, pixelated)}<figcaption>{esc(caption)}</figcaption></figure>"


# --------------------------------------------------------------------------- plots (matplotlib, SVG)


def new_figure(width_in: float, height_in: float):
    """A matplotlib ``Figure`` (no pyplot: no GUI backend, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def svg_uri(figure) -> str:
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "fcn-deploy"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return data_uri(buffer.getvalue(), "image/svg+xml")


def plot(figure, alt: str) -> str:
    """The figure as an embedded SVG ``<img>`` at its own size."""
    width, height = (round(v * 96) for v in figure.get_size_inches())
    return f'<img src="{svg_uri(figure)}" alt="{esc(alt)}" width="{width}" height="{height}">'


def series_colours(count: int) -> list:
    """``count`` distinct colours (matplotlib's tab10, or tab20 beyond ten)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]
