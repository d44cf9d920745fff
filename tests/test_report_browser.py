"""The HTML pages in a real browser: headless Chromium (Debian's ``chromium``) opens each page,
takes a screenshot, and the page must have rendered: not blank, the expected headings, every
picture decoded, no console errors, and nothing requested but the file itself and its ``data:`` URIs.

Skipped, with the reason, where Chromium is not installed (``.ci/run`` installs it; by hand:
``sudo apt-get install -y --no-install-recommends chromium``).  Set ``FCN_DEPLOY_SCREENSHOTS=DIR``
to keep the screenshots.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn_deploy.data.synthetic import make_scene
from fcn_deploy.media import write_video
from fcn_deploy.render.html import benchmark_page, demo_page, validation_page, write_page
from fcn_deploy.validation import ExampleKeeper, ValidateOptions, ValidationReport, validate_engine

from browser import Browser, find_chromium
from helpers import THRESHOLDS, perturbed_copy

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (sudo apt-get install -y --no-install-recommends chromium)"
)
SIZES = "32x32,97x129,64x200"


def synthetic_benchmark(batches=(1, 4)) -> dict:
    """A benchmark report as run_benchmark writes it, at two sizes and two batches (no timing needed)."""
    results = []
    for batch in batches:
        for height, width in ((128, 128), (256, 256)):
            for backend, precision, factor, memory in (("torch", "fp32", 1.0, 310.0), ("onnxruntime", "fp32", 0.7, 120.0),
                                                       ("onnxruntime", "int8", 0.4, 95.0)):  # fmt: skip
                median = height * width / 5000 * batch * factor
                results.append({
                    "engine": "tiny.pt" if backend == "torch" else f"tiny.{precision}.ort.onnx", "label": f"{backend}-{precision}",
                    "backend": backend, "precision": precision, "device": "cpu", "height": height, "width": width, "batch": batch,
                    "median_ms": median, "p10_ms": median * 0.9, "p90_ms": median * 1.25, "throughput_fps": batch * 1000 / median,
                    "speedup_vs_torch": 1 / factor, "peak_memory_mb": memory, "memory_kind": "peak_rss_growth",
                })  # fmt: skip
    return {"results": results, "settings": {"warmup": 2, "iters": 10, "batch": 1}, "machine": {"cpu_count": 2, "threads": 2},
            "baseline": {"checkpoint": "tiny.pt"}}  # fmt: skip


@pytest.fixture(scope="module")
def pages(tiny_onnx, tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """A validation page from one real run (an engine with a perturbed score layer, so it disagrees),
    a benchmark page, a demo-like page with a real overlay video, and an empty validation."""
    from fcn_deploy.demo import _summary
    from fcn_deploy.inference import run_infer

    out = tmp_path_factory.mktemp("pages")
    broken = perturbed_copy(
        tiny_onnx, out / "broken.onnx", pick=lambda i: len(i.dims) == 4 and i.dims[0] == 5 and i.dims[2] == 1,
        edit=lambda w: w + np.random.default_rng(0).normal(0, 2 * np.abs(w).mean(), w.shape).astype(w.dtype),
    )  # fmt: skip
    validations, keepers = {}, {}
    for label, engine in (("onnxruntime-fp32", tiny_onnx), ("onnxruntime-int8", broken)):
        keepers[label] = ExampleKeeper(worst=2, max_failing=2)
        validations[label] = validate_engine(engine, tiny_checkpoint, ValidateOptions(sizes=SIZES, keep_examples=keepers[label])).to_dict()
    assert validations["onnxruntime-int8"]["summary"]["disagreeing_pixels"] > 0 and keepers["onnxruntime-int8"].examples

    video = out / "sample.mp4"
    write_video(video, (make_scene(5, i, 72, 128)[0] for i in range(6)))
    overlay = out / "sample.overlay.mp4"
    infer = run_infer(video, tiny_onnx, out=overlay) | {"standalone_engine_fps": 100.0}
    benchmark = synthetic_benchmark(batches=(1,))
    class_names = validations["onnxruntime-fp32"]["class_names"]
    demo = {"out": str(out), "passed": False, "seconds": {"total": 12.0}, "steps": {
        "eval": {"split": "synthetic val", "class_names": class_names, "mean_iu": 0.8, "pixel_accuracy": 0.9,
                 "mean_accuracy": 0.85, "fw_iu": 0.82, "per_class_iu": [0.95, 0.8, 0.7, float("nan"), 0.75][: len(class_names)]},
        "validate": validations, "infer": infer, "benchmark": benchmark,
    }}  # fmt: skip
    demo["summary"] = _summary(demo)
    empty = ValidationReport(str(tiny_onnx), "onnxruntime", "fp32", str(tiny_checkpoint), THRESHOLDS, [], 5).to_dict()
    return {
        "validate": write_page(out / "validate.html", validation_page(validations["onnxruntime-int8"], keepers["onnxruntime-int8"])),
        "benchmark": write_page(out / "benchmark.html", benchmark_page(synthetic_benchmark())),
        "demo": write_page(out / "demo.html", demo_page(demo, keepers, video=video, overlay=overlay)),
        "empty": write_page(out / "empty.html", validation_page(empty, ExampleKeeper())),
    }


@pytest.fixture(scope="module")
def browser():
    chromium = Browser(CHROMIUM)
    yield chromium
    chromium.close()


EXPECTED = {
    "validate": ["Validation: broken.onnx", "Edges or regions?", "Where the engine disagrees", "Per size"],
    "benchmark": ["Benchmark", "Latency", "Speed-up over PyTorch eager FP32", "Throughput vs batch", "Memory", "All results"],
    "demo": [
        "fcn-deploy demo",
        "Summary",
        "Held-out accuracy",
        "Validation",
        "onnxruntime-fp32",
        "onnxruntime-int8",
        "Benchmark",
        "Video",
    ],  # fmt: skip
    "empty": ["Validation: tiny.onnx"],
}
#: At least this many decoded pictures and plots per page: validate: histogram, colour key and a row of 4 per
#: kept size (2); benchmark: latency, speed-up, throughput vs batch, memory; demo: that validate, per-class IU,
#: 3 benchmark plots and 3 video frames beside their sources.
MIN_IMAGES = {"validate": 2 + 4 * 2, "benchmark": 4, "demo": 2 + 4 * 2 + 1 + 3 + 3 * 2, "empty": 0}


def not_blank(screenshot: Path) -> tuple[float, int]:
    """The share of pixels that are not the page's white, and the number of distinct colours."""
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3)
    return float((pixels.min(axis=1) < 240).mean()), len(np.unique(pixels[:: max(1, len(pixels) // 200_000)], axis=0))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_page_renders_in_chromium(browser, pages, name, tmp_path):
    shots = Path(os.environ.get("FCN_DEPLOY_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.open(pages[name])
    first_screen = page.screenshot(shots / f"{name}.png")
    page.screenshot(shots / f"{name}.full.png", full_page=True)

    headings = page.evaluate("[...document.querySelectorAll('h1, h2, h3')].map(e => e.textContent.trim())")
    assert set(EXPECTED[name]) <= set(headings), headings
    assert page.console_errors() == []
    assert all(url.startswith(("file:", "data:")) for url in page.requested_urls())
    images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
    assert [alt for alt, decoded in images if not decoded] == [] and len(images) >= MIN_IMAGES[name]
    inked, colours = not_blank(first_screen)
    assert inked > 0.02 and colours > (8 if name == "empty" else 100), (inked, colours)
    text = page.evaluate("document.body.innerText")
    if name == "validate":
        assert "FAILED" in text and ("Edges." in text or "Regions." in text or "Mixed" in text)
    if name == "empty":
        assert "No sizes were validated" in text


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """The detectors work: a console error, a failed external load and a missing picture are all seen."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><h1>Bad</h1><script>console.error("boom")</script>'
                   '<img src="http://127.0.0.1:9/nothing.png" alt="remote"></body></html>')  # fmt: skip
    page = browser.open(bad)
    assert any("boom" in problem for problem in page.console_errors())
    assert "http://127.0.0.1:9/nothing.png" in page.requested_urls()
    assert page.evaluate("[...document.images].map(i => i.naturalWidth)") == [0]
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert not_blank(browser.open(blank).screenshot(tmp_path / "blank.png"))[0] == 0.0
