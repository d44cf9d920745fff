"""The benchmark page: latency with p10-p90 bars, speed-up over the PyTorch baseline, throughput vs
batch, peak memory and the table of every result; one colour per engine on every plot."""

from __future__ import annotations

from pathlib import Path

from .page import esc, html_page, new_figure, num, plot, series_colours, table


def _series_names(results: list[dict]) -> dict[tuple[str, str], str]:
    """One display name per (engine, device): ``backend precision``, the file added where two share it."""
    names: dict[tuple[str, str], str] = {}
    for r in results:
        key = (str(r.get("engine", r.get("label"))), str(r.get("device", "")))
        if key not in names:
            torch = bool(r.get("baseline"))
            names[key] = f"torch eager fp32 ({r.get('device', 'cpu')})" if torch else f"{r.get('backend')} {r.get('precision')}"
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: (n if counts[n] == 1 else f"{n} ({Path(k[0]).name})") for k, n in names.items()}


def _key(r: dict) -> tuple[str, str]:
    return str(r.get("engine", r.get("label"))), str(r.get("device", ""))


def _grouped_bars(results: list[dict], names: dict, colours: dict, value: str, title: str, ylabel: str, errors: bool = False,
                  baseline: float | None = None) -> str:  # fmt: skip
    """Bars per series, grouped by size (and batch where several were measured)."""
    groups = sorted({(r["batch"], r["height"], r["width"]) for r in results}, key=lambda g: (g[1] * g[2], g[0]))
    several_batches = len({g[0] for g in groups}) > 1
    series = list(dict.fromkeys(_key(r) for r in results))
    by = {(_key(r), (r["batch"], r["height"], r["width"])): r for r in results}
    width = 0.8 / max(1, len(series))
    figure = new_figure(min(12.5, 2.2 + 0.45 * len(series) * len(groups) + 0.6 * len(groups)), 3.6)
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
    return plot(figure, title)


def _throughput_vs_batch(results: list[dict], names: dict, colours: dict) -> str:
    sizes = sorted({(r["height"], r["width"]) for r in results}, key=lambda s: s[0] * s[1])[:4]
    series = list(dict.fromkeys(_key(r) for r in results))
    figure = new_figure(min(12.5, 3.4 * len(sizes) + 1.8), 3.2)
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
    return plot(figure, "throughput vs batch")


def _memory_plot(results: list[dict], names: dict, colours: dict) -> str:
    series = list(dict.fromkeys(_key(r) for r in results if r.get("peak_memory_mb") is not None))
    peaks = [max(r["peak_memory_mb"] for r in results if _key(r) == key and r.get("peak_memory_mb") is not None) for key in series]
    figure = new_figure(6.5, 0.6 + 0.32 * len(series))
    ax = figure.add_subplot()
    ax.barh(range(len(series)), peaks, color=[colours[k] for k in series])
    ax.set_yticks(range(len(series)), [names[k] for k in series], fontsize=8)
    ax.invert_yaxis()
    kinds = {r.get("memory_kind") for r in results} - {None}
    ax.set_xlabel("MB (" + ", ".join(sorted(k.replace("_", " ") for k in kinds)) + ")" if kinds else "MB", fontsize=8)
    ax.tick_params(labelsize=8)
    return plot(figure, "peak memory")


def benchmark_section(report: dict, level: int = 2) -> str:
    """Latency with p10-p90 bars, speed-up, throughput vs batch (where measured), memory and the table."""
    h = f"h{level}"
    results = [r for r in report.get("results") or [] if r.get("median_ms") is not None]
    if not results:
        return '<div class="verdict empty"><b>No results</b>: this benchmark report timed nothing.</div>'
    names = _series_names(results)
    series = list(dict.fromkeys(_key(r) for r in results))
    colours = dict(zip(series, series_colours(len(series))))  # one colour per engine on every plot
    parts = []
    settings, machine = report.get("settings") or {}, report.get("machine") or {}
    how = [f"{settings['warmup']} warm-up + {settings['iters']} timed runs per engine and size" if "iters" in settings else "",
           settings.get("isolation", ""), settings.get("order", ""),
           f"{machine['cpu_count']} CPUs, threads {machine.get('threads', '?')}" if "cpu_count" in machine else ""]  # fmt: skip
    if any(how):
        parts.append(f'<p class="muted">{esc("; ".join(filter(None, how)))}.</p>')
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
         f"{r.get('p10_ms', r['median_ms']):.2f}-{r.get('p90_ms', r['median_ms']):.2f}", num(r.get("throughput_fps"), ".2f"),
         "-" if r.get("speedup_vs_torch") is None else f"{r['speedup_vs_torch']:.2f}x", num(r.get("peak_memory_mb"), ".0f"),
         "-" if r.get("baseline") else Path(str(r.get("engine", ""))).name]
        for r in results
    ]  # fmt: skip
    parts += [f"<{h}>All results</{h}>", table(["engine", "device", "N x H x W", "median ms", "p10-p90 ms", "images/s",
                                                 "vs torch", "peak MB", "file"], rows, numeric={3, 4, 5, 6, 7})]  # fmt: skip
    return "\n".join(parts)


def benchmark_page(report: dict) -> str:
    """The page of one benchmark report (what ``run_benchmark`` returns)."""
    results = report.get("results") or []
    sizes = sorted({f"{r.get('height')}x{r.get('width')}" for r in results})
    sub = f"{len({_key(r) for r in results})} contenders at {', '.join(sizes) or 'no size'}; baseline: PyTorch eager FP32"
    baseline = (report.get("baseline") or {}).get("checkpoint")
    if baseline:
        sub += f" ({esc(baseline)})"
    return html_page("Benchmark", f'<h1>Benchmark</h1>\n<p class="sub">{esc(sub)}</p>\n{benchmark_section(report)}')
