"""The demo's page: the verdict and summary, held-out accuracy, every engine's validation, the
benchmark and frames of the overlay video beside their source frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...validation import ExampleKeeper
from .bench import benchmark_section
from .page import esc, html_figure, html_page, jpeg_uri, mark, new_figure, num, pct, plot, table
from .validation import validation_section

#: How many frames of the demo's video the page shows, and at least how wide.
VIDEO_FRAMES_SHOWN, VIDEO_MIN_WIDTH = 3, 360


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
        row = [html_figure(jpeg_uri(picture), f"overlay, frame {index}", w, h, pixelated=False)]
        if index in source_frames:
            row.insert(0, html_figure(jpeg_uri(source_frames[index]), f"source, frame {index}", w, h, pixelated=False))
        rows.append(f'<div class="row">{"".join(row)}</div>')
    return f'<p class="muted">{esc(Path(overlay).name)}: frames beside their source frames.</p>' + "".join(rows)


def _class_iu_plot(class_names: Sequence[str], per_class_iu: Sequence[float], palette) -> str:
    figure = new_figure(min(12.0, 1.6 + 0.55 * len(class_names)), 2.8)
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
    return plot(figure, "held-out IU per class")


def demo_page(report: dict, keepers: dict[str, ExampleKeeper] | None = None, video: Path | None = None,
              overlay: Path | None = None, palette: Sequence[Sequence[int]] | None = None) -> str:  # fmt: skip
    """The demo's page: summary, held-out accuracy, every engine's validation, the benchmark and video frames."""
    keepers = keepers or {}
    steps, summary = report.get("steps") or {}, report.get("summary") or {}
    validations = steps.get("validate") or {}
    results = (steps.get("benchmark") or {}).get("results") or []
    passed = report.get("passed")
    body = ["<h1>fcn-deploy demo</h1>", f'<p class="sub">output folder {esc(report.get("out", "?"))} &middot; '
            f'total {report.get("seconds", {}).get("total", 0):.0f} s</p>']  # fmt: skip
    verdict_class = "pass" if passed else "fail"
    failed = [label for label, v in validations.items() if not v.get("passed")]
    body.append(f'<div class="verdict {verdict_class}"><b>{"PASSED" if passed else "FAILED"}</b> &mdash; '
                f'{len(validations) - len(failed)} of {len(validations)} engines validated'
                + (f'; failed: {esc(", ".join(failed))}' if failed else "") + "</div>")  # fmt: skip

    body.append("<h2>Summary</h2>")
    size = summary.get("bench_size") or ([results[0]["height"], results[0]["width"]] if results else ["?", "?"])
    if not any([r["height"], r["width"]] == list(size) for r in results) and results:
        size = [results[0]["height"], results[0]["width"]]
    rows = []
    for r in (r for r in results if [r["height"], r["width"]] == list(size)):
        if r.get("baseline"):
            rows.append(["torch eager fp32 (reference)", r.get("device", "-"), "-", "-", "-", "-", f"{r['median_ms']:.1f}", "1.00x", "-"])
            continue
        v = validations.get(r.get("label"), {})
        vs = v.get("summary") or {}
        vs_ort = (summary.get("vs_onnxruntime_fp32") or {}).get(r.get("label"))
        share = vs.get("disagree_near_edge_share")
        rows.append([
            f"{r.get('backend')} {r.get('precision')}", r.get("device", "-"), mark(bool(v.get("passed"))),
            pct(vs.get("pixel_agreement"), 4), num(vs.get("mean_iu_vs_reference"), ".4f"),
            "-" if share is None else f"{share * 100:.0f}%", f"{r['median_ms']:.1f}",
            "-" if r.get("speedup_vs_torch") is None else f"{r['speedup_vs_torch']:.2f}x", "-" if vs_ort is None else f"{vs_ort:.2f}x",
        ])  # fmt: skip
    body.append(table(["engine", "device", "valid", "agreement", "mIU vs ref", "disagreements on edges",
                        f"median ms @{size[0]}x{size[1]}", "vs torch", "vs ORT fp32"], rows, numeric={3, 4, 5, 6, 7, 8}))  # fmt: skip
    if summary.get("video_fps") is not None:
        body.append(
            f"<p>Video ({esc(summary.get('video_engine'))}): <b>{summary['video_fps']:.1f} fps</b> end to end"
            + (f", {summary['video_fps_ratio']:.2f}x the engine's rate inside the pipeline" if summary.get("video_fps_ratio") else "")
            + "</p>"
        )

    evaluation = steps.get("eval") or {}
    body.append("<h2>Held-out accuracy</h2>")
    if evaluation.get("per_class_iu"):
        names = evaluation.get("class_names") or [str(i) for i in range(len(evaluation["per_class_iu"]))]
        body.append(
            f"<p>{esc(evaluation.get('split', 'held-out split'))}: mean IU <b>{num(evaluation.get('mean_iu'), '.4f')}</b>, "
            f"pixel accuracy {num(evaluation.get('pixel_accuracy'), '.4f')}, "
            f"mean accuracy {num(evaluation.get('mean_accuracy'), '.4f')}, f.w. IU {num(evaluation.get('fw_iu'), '.4f')}</p>"
        )
        body.append(f'<div class="row">{_class_iu_plot(names, evaluation["per_class_iu"], palette)}'
                    + table(["class", "IU"], [[n, num(v, ".4f")] for n, v in zip(names, evaluation["per_class_iu"])], numeric={1})
                    + "</div>")  # fmt: skip
    else:
        body.append("<p>No evaluation in this report.</p>")

    body.append("<h2>Validation</h2>")
    if not validations:
        body.append('<div class="verdict empty"><b>No engine was validated.</b></div>')
    for label, validation in validations.items():
        body.append(f'<h3 id="validate-{esc(label)}">{esc(label)}</h3>')
        body.append(validation_section(validation, keepers.get(label), level=4, collapse_table=True))

    body.append("<h2>Benchmark</h2>")
    body.append(benchmark_section(steps.get("benchmark") or {}, level=3))

    body.append("<h2>Video</h2>")
    body.append(_video_section(video, overlay))
    return html_page("fcn-deploy demo", "\n".join(body))
