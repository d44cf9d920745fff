"""HTML pages: the --html path is checked before any work, "edges or regions?" is measured right,
example capture stays bounded, and empty reports give a page that says so."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from fcn_deploy import __version__
from fcn_deploy.backends import Prediction
from fcn_deploy.cli import main
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.render.html import benchmark_page, check_page_path, demo_page, disagreement_picture, validation_page
from fcn_deploy.validation import (
    MARGIN_BIN_EDGES,
    METRICS,
    ExampleKeeper,
    Metric,
    ValidationReport,
    compare,
    near_edge,
)
from fcn_deploy.validation.metrics import register, unregister

from helpers import THRESHOLDS

PALETTE = [[0, 0, 0], [200, 30, 60], [40, 180, 80]]


def prediction(mask: np.ndarray, margin: float = 3.0) -> Prediction:
    """A prediction whose logits give ``mask`` with a top-1 minus top-2 margin of ``margin`` everywhere."""
    logits = np.zeros((mask.shape[0], 3, *mask.shape[1:]), np.float32)
    np.put_along_axis(logits, mask[:, None].astype(np.int64), margin, axis=1)
    return Prediction(mask=mask.astype(np.int64), logits=logits)


def square(shift: int = 0) -> np.ndarray:
    mask = np.zeros((1, 40, 40), np.int64)
    mask[0, 10 + shift : 30 + shift, 10:30] = 1
    return mask


def flipped_centre() -> np.ndarray:
    mask = square()
    mask[0, 14:26, 14:26] = 2  # the square's centre relabelled: 5+ px from any reference boundary
    return mask


def report_of(reference: np.ndarray, engine: np.ndarray, keeper: ExampleKeeper | None = None, margin: float = 3.0) -> ValidationReport:
    ref, eng = prediction(reference, margin), prediction(engine)
    case = compare(ref, eng, 3, THRESHOLDS)
    if keeper is not None:
        keeper.palette = PALETTE
        keeper.offer(case, np.zeros((*reference.shape, 3), np.uint8) + 90, ref, eng)
    return ValidationReport("e.onnx", "onnxruntime", "int8", "r.pt", THRESHOLDS, [case], 3, ["background", "a", "b"])


# --- edges or regions ------------------------------------------------------------------------


def test_near_edge_tells_a_shifted_outline_from_a_flipped_region():
    reference = square()
    shifted = np.nonzero(reference != square(shift=1))  # the square moved down by a pixel: two 1-px bands
    flipped = np.nonzero(reference != flipped_centre())
    assert len(shifted[0]) == 40 and near_edge(reference, shifted).all()
    assert len(flipped[0]) == 144 and not near_edge(reference, flipped).any()
    # the image border is no class boundary: a disagreement in a corner of a flat region is not "on an edge"
    assert not near_edge(np.zeros((1, 9, 9), np.int64), (np.array([0]), np.array([0]), np.array([0]))).any()


@pytest.mark.parametrize(("engine", "answer", "share"), [(square(shift=1), "Edges.", 1.0), (flipped_centre(), "Regions.", 0.0)])
def test_validation_page_answers_edges_or_regions(engine, answer, share):
    keeper = ExampleKeeper()
    result = report_of(square(), engine, keeper)
    data = result.to_dict()
    assert data["summary"]["disagree_near_edge_share"] == share
    assert data["cases"][0]["disagree_near_edge"] == (40 if share else 0)
    assert data["class_names"] == ["background", "a", "b"]
    page = validation_page(data, keeper)
    first_screen = page[: page.index("Where the engine disagrees")]
    assert answer in first_screen and f"{share * 100:.1f}%</b> of the {int((square() != engine).sum())} disagreeing pixels" in first_screen
    assert page.count('<img class="px"') == 4  # input, reference mask, engine mask, disagreement map
    assert "<script" not in page and "http://" not in page and "https://" not in page
    # both fail: the flipped centre (91 %) at its size too, the shifted outline (97.5 %) only over all sizes
    assert data["passed"] is False and '<div class="verdict fail"><b>FAILED</b>' in first_screen and "PASSED" not in page
    if share:  # 97.5 % clears the 95 % per-size floor: the size passes, the pooled 99 % gate fails it
        assert data["cases"][0]["passed"] is True and data["failing_sizes"] == []
        assert data["failures"] == ["pixel agreement over all sizes 0.97500 < 0.99"]
        assert "<li>all sizes: pixel agreement over all sizes 0.97500 &lt; 0.99</li>" in first_screen
    else:
        assert data["cases"][0]["passed"] is False and data["failing_sizes"] == ["40x40"]
        assert "<b>FAILED</b> at 1 of 1 sizes" in first_screen


def test_keeper_bounds_its_examples_and_histograms_every_disagreeing_pixel():
    keeper = ExampleKeeper(worst=2, max_failing=3)
    keeper.palette = PALETTE
    total = 0
    for index in range(10):  # case i disagrees on i+1 pixels at margin 0.02; even cases fail
        reference = np.zeros((2, 16, 16), np.int64)
        engine = reference.copy()
        engine[1].flat[: index + 1] = 1  # the batch's second image is the worse one
        ref, eng = prediction(reference, margin=0.02), prediction(engine)
        case = compare(ref, eng, 3, THRESHOLDS)
        case.failures = [] if index % 2 == 1 else ["forced to fail"]
        assert case.passed == (index % 2 == 1)
        keeper.offer(case, np.zeros((2, 16, 16, 3), np.uint8), ref, eng)
        total += index + 1
    kept = [(e.disagreeing, e.passed) for e in keeper.examples]
    assert kept == [(10, True), (9, False), (7, False), (5, False)]  # the 2 worst, then the 3 worst failing (9 is both)
    assert all(e.image.shape == (16, 16, 3) and e.margin.dtype == np.float16 for e in keeper.examples)
    assert keeper.margin_counts.sum() == total
    assert keeper.margin_counts[np.searchsorted(MARGIN_BIN_EDGES, 0.02, side="right") - 1] == total


def test_reduced_disagreement_map_keeps_a_single_pixel():
    reference = np.zeros((1000, 700), np.int64)
    engine = reference.copy()
    engine[501, 333] = 1
    margin = np.full(reference.shape, 5.0, np.float16)
    picture = disagreement_picture(reference, engine, margin, PALETTE, factor=3)
    assert picture.shape == (334, 234, 3)
    background = picture[0, 0]
    assert (np.any(picture != background, axis=-1)).sum() == 1 and np.any(picture[167, 111] != background)


# --- empty reports ---------------------------------------------------------------------------


def test_empty_reports_give_pages_that_say_so():
    empty = ValidationReport("e.onnx", "onnxruntime", "fp32", "r.pt", THRESHOLDS, [], 3).to_dict()
    assert "No sizes were validated" in validation_page(empty, ExampleKeeper())
    assert "No results" in benchmark_page({"results": []})
    page = demo_page({"steps": {}, "summary": {}})
    assert "No engine was validated" in page and "No evaluation" in page and "No overlay video" in page


# --- the --html path, checked before the run -------------------------------------------------


def test_page_path_checks(tmp_path):
    with pytest.raises(FcnDeployError, match=r"folder .*nope does not exist; create it") as missing:
        check_page_path(tmp_path / "nope" / "page.html")
    with pytest.raises(FcnDeployError, match=r"is a folder; give a file name such as .*report\.html") as folder:
        check_page_path(tmp_path)
    existing = tmp_path / "page.html"
    existing.write_text("keep me")
    with pytest.raises(FcnDeployError, match=r"page\.html already exists; overwrite it or choose another path") as exists:
        check_page_path(existing)
    assert missing.value.options == folder.value.options == ("html",) and exists.value.options == ("html", "overwrite")
    assert not any("--" in str(e.value) for e in (missing, folder, exists))  # the library names options, the CLI flags
    assert check_page_path(existing, overwrite=True) == existing


@pytest.mark.parametrize("command", ["validate", "benchmark", "demo"])
def test_bad_html_path_fails_before_any_work(command, tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("the run started before the --html path was checked")

    import fcn_deploy.bench
    import fcn_deploy.demo
    import fcn_deploy.validation

    monkeypatch.setattr(fcn_deploy.validation, "validate_engine", no_work)
    monkeypatch.setattr(fcn_deploy.bench, "run_benchmark", no_work)
    monkeypatch.setattr(fcn_deploy.demo, "run_demo", no_work)
    args = {"validate": ["validate", "e.onnx", "-r", "c.pt"], "benchmark": ["benchmark", "e.onnx"],
            "demo": ["demo", "--out", str(tmp_path / "demo")]}[command]  # fmt: skip
    existing = tmp_path / "page.html"
    existing.write_text("keep me")
    for html, flags, message in ((tmp_path / "missing" / "p.html", "--html", "does not exist"),
                                 (existing, "--html/--overwrite", "already exists; overwrite it or choose another path")):  # fmt: skip
        assert main([*args, "--html", str(html)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {flags}: {html}") and message in err and len(err.splitlines()) == 1
    assert existing.read_text() == "keep me" and not (tmp_path / "demo").exists()


def test_validate_html_page(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    page, report = tmp_path / "val.html", tmp_path / "val.json"
    code = main(["validate", str(tiny_onnx), "-r", str(tiny_checkpoint), "--sizes", "32x32,64x96", "--html", str(page),
                 "--report", str(report)])  # fmt: skip
    assert code == 0 and f"page: {page}" in capsys.readouterr().out
    data = json.loads(report.read_text())
    text = page.read_text()
    assert "PASSED" in text and "1x32x32" in text and "1x64x96" in text and "Edges or regions?" in text
    if data["summary"]["disagreeing_pixels"] == 0:  # ORT FP32 vs torch: usually identical masks
        assert "No disagreement." in text
    assert "<script" not in text and __version__ in text
    # --overwrite replaces it
    assert main(["validate", str(tiny_onnx), "-r", str(tiny_checkpoint), "--sizes", "32x32", "--html", str(page), "--overwrite"]) == 0
    assert "1x64x96" not in page.read_text()


# --- a metric is one place -------------------------------------------------------------------


class EngineOnes(Metric):
    """A toy metric: the share of pixels the engine labels class 1."""

    key, label = "toy_engine_ones", "engine ones"
    description = "share of pixels the engine labels class 1 (a test metric)"
    percent, digits = True, 2

    def measure(self, c):
        return {"ones": int((c.engine.mask == 1).sum()), "pixels": int(c.engine.mask.size)}

    def value(self, stats):
        return stats["ones"] / stats["pixels"] if stats.get("pixels") else None


def per_size_table(page: str) -> tuple[list[str], list[list[str]]]:
    """The per-size table's headers and cells, as text."""
    found = page[page.index("<table>") : page.index("</table>")]
    headers = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th>(.*?)</th>", found)]
    rows = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", found)[1:]]  # fmt: skip
    return headers, rows


def test_a_registered_metric_is_a_column_of_the_json_report_and_the_page():
    register(EngineOnes())
    try:
        data = report_of(square(), square(shift=1)).to_dict()  # the engine's square: 400 of 1600 pixels
        registered_page = validation_page(data)
    finally:
        unregister(EngineOnes.key)
    assert EngineOnes.key not in METRICS
    assert data["metrics"][EngineOnes.key] == {"label": "engine ones", "description": EngineOnes.description, "percent": True,
                                              "column": True, "digits": 2}  # fmt: skip
    assert data["cases"][0][EngineOnes.key] == 0.25 and data["summary"][EngineOnes.key] == 0.25
    standard = ["", "N x H x W", "agreement", "confident", "max disagree margin", "mIU vs ref", "max |Δlogit|"]
    where = ["disagreeing px", "on edges", "why it failed"]
    # the page drawn then, and later from the saved JSON (the metric no longer registered), show its column
    for page in (registered_page, validation_page(json.loads(json.dumps(data)))):
        headers, rows = per_size_table(page)
        assert headers == [*standard, "engine ones", *where]
        assert rows[0][1:3] == ["1x40x40", "97.5000%"] and rows[0][headers.index("engine ones")] == "25.00%"
        assert rows[0][-3:-1] == ["40", "100.0%"]
        assert f'title="{EngineOnes.description}"' in page
    # a report without a metrics entry gets the registered metrics' columns: now without the toy
    headers, _ = per_size_table(validation_page({k: v for k, v in data.items() if k != "metrics"}))
    assert headers == [*standard, *where]
