"""HTML pages: the --html path is checked before any work, "edges or regions?" is measured right,
example capture stays bounded, and empty reports give a page that says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fcn_deploy import report as report_module
from fcn_deploy.backends import Prediction
from fcn_deploy.cli import main
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.report import benchmark_page, check_page_path, demo_page, disagreement_picture, validation_page
from fcn_deploy.validation import (
    MARGIN_BIN_EDGES,
    ExampleKeeper,
    Thresholds,
    ValidationReport,
    compare,
    near_edge,
)

THRESHOLDS = Thresholds(pixel_agreement=0.99, size_floor=0.95, confident_agreement=None, confidence_margin=0.5)
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
        case.passed = index % 2 == 1
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
    with pytest.raises(FcnDeployError, match=r"folder .*nope does not exist; create it"):
        check_page_path(tmp_path / "nope" / "page.html")
    with pytest.raises(FcnDeployError, match=r"is a folder; give a file name such as .*report\.html"):
        check_page_path(tmp_path)
    existing = tmp_path / "page.html"
    existing.write_text("keep me")
    with pytest.raises(FcnDeployError, match=r"page\.html already exists; pass --overwrite"):
        check_page_path(existing)
    assert check_page_path(existing, overwrite=True) == existing


@pytest.mark.parametrize("command", ["validate", "benchmark", "demo"])
def test_bad_html_path_fails_before_any_work(command, tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("the run started before the --html path was checked")

    import fcn_deploy.bench
    import fcn_deploy.demo
    import fcn_deploy.validate

    monkeypatch.setattr(fcn_deploy.validate, "validate_engine", no_work)
    monkeypatch.setattr(fcn_deploy.bench, "run_benchmark", no_work)
    monkeypatch.setattr(fcn_deploy.demo, "run_demo", no_work)
    args = {"validate": ["validate", "e.onnx", "-r", "c.pt"], "benchmark": ["benchmark", "e.onnx"],
            "demo": ["demo", "--out", str(tmp_path / "demo")]}[command]  # fmt: skip
    existing = tmp_path / "page.html"
    existing.write_text("keep me")
    for html, message in ((tmp_path / "missing" / "p.html", "does not exist"), (existing, "already exists; pass --overwrite")):
        assert main([*args, "--html", str(html)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and len(err.splitlines()) == 1
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
    assert "<script" not in text and report_module.__version__ in text
    # --overwrite replaces it
    assert main(["validate", str(tiny_onnx), "-r", str(tiny_checkpoint), "--sizes", "32x32", "--html", str(page), "--overwrite"]) == 0
    assert "1x64x96" not in page.read_text()
