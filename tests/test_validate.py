"""validate: correct engines pass; deliberately broken ones fail at named sizes, with exit code 1."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fcn_deploy.backends import Prediction
from fcn_deploy.cli import main
from fcn_deploy.errors import FcnDeployError
from fcn_deploy.export import export_onnx
from fcn_deploy.validation import (
    DEFAULT_THRESHOLDS,
    InputSource,
    Thresholds,
    ValidateOptions,
    compare,
    parse_sizes,
    thresholds_for,
    top2_margin,
    validate_engine,
)

from helpers import perturbed_copy

SIZES = "32x32,97x129,64x200,131x67"


def test_correct_engine_passes_and_report_is_parseable(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    report = tmp_path / "report.json"
    code = main(["validate", str(tiny_onnx), "--reference", str(tiny_checkpoint), "--random-sizes", "2",
                 "--max-side", "200", "--report", str(report)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "✓" in out
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert len(data["cases"]) >= 8
    for case in data["cases"]:
        assert {"height", "width", "pixel_agreement", "passed"} <= set(case)
        assert 0.0 <= case["pixel_agreement"] <= 1.0
    assert (32, 32) in {(c["height"], c["width"]) for c in data["cases"]}  # the profile's min


def test_perturbed_weight_fails_and_names_the_sizes(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    broken = perturbed_copy(
        tiny_onnx, tmp_path / "broken.onnx",
        pick=lambda i: len(i.dims) == 4 and i.dims[0] == 5 and i.dims[2] == 1,  # a 1x1 score layer
        edit=lambda w: w + np.random.default_rng(0).normal(0, 2 * np.abs(w).mean(), w.shape).astype(w.dtype),
    )  # fmt: skip
    report = tmp_path / "report.json"
    code = main(["validate", str(broken), "-r", str(tiny_checkpoint), "--sizes", SIZES, "--report", str(report)])
    assert code == 1
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["failing_sizes"]
    assert "FAILED" in out
    for size in data["failing_sizes"]:
        assert size in out
    failing = [c for c in data["cases"] if not c["passed"]]
    assert all(c["failures"] for c in failing)


def test_wrong_resize_mode_fails(tmp_path):
    """The torchvision-style FCN ends in a bilinear Resize; nearest instead must be caught."""
    from helpers import random_checkpoint

    ckpt = random_checkpoint(tmp_path / "r50.pt", "fcn-resnet50", {"width": 0.125})
    good = tmp_path / "r50.onnx"
    export_onnx(ckpt, good, check_sizes=[(64, 64)])
    model = onnx.load(str(good))
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resizes
    for node in resizes:
        for attr in node.attribute:
            if attr.name == "mode":
                attr.s = b"nearest"
    bad = tmp_path / "r50.nearest.onnx"
    onnx.save(model, str(bad))
    good_report = validate_engine(good, ckpt, ValidateOptions(sizes=SIZES))
    bad_report = validate_engine(bad, ckpt, ValidateOptions(sizes=SIZES))
    assert good_report.passed
    assert not bad_report.passed
    assert set(bad_report.failing_sizes) <= {s for s in SIZES.split(",")} and bad_report.failing_sizes


def test_compare_metrics_on_constructed_predictions():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (1, 3, 20, 30)).astype(np.float32)
    reference = Prediction(mask=logits.argmax(1), logits=logits)
    margin = top2_margin(logits)
    flip = margin < 0.05  # only near-ties disagree
    engine_mask = reference.mask.copy()
    engine_mask[flip] = (engine_mask[flip] + 1) % 3
    engine = Prediction(mask=engine_mask, logits=logits + 0.01)
    case = compare(reference, engine, 3, Thresholds(pixel_agreement=0.5, confident_agreement=1.0, confidence_margin=0.05))
    assert case.pixel_agreement == pytest.approx(1 - flip.mean())
    assert case.confident_agreement == 1.0 and case.passed
    assert case.max_disagree_margin < 0.05
    assert case.max_abs_logit_diff == pytest.approx(0.01, abs=1e-6)
    strict = compare(reference, engine, 3, Thresholds(pixel_agreement=0.5, confident_agreement=1.0, confidence_margin=0.01))
    assert not strict.passed and "confident-pixel agreement" in strict.failures[0]


def test_thresholds_and_sizes_parsing(tiny_onnx, tiny_checkpoint, tmp_path, capsys):
    assert thresholds_for("int8").min_mean_iu == 0.97 and thresholds_for("int8").pixel_agreement == 0.99
    assert thresholds_for("fp16").pixel_agreement == 0.999 and thresholds_for("fp32").pixel_agreement == 0.9999
    assert thresholds_for("fp16", pixel_agreement=0.5).pixel_agreement == 0.5
    assert DEFAULT_THRESHOLDS["fp32"].confident_agreement == 1.0
    with pytest.raises(FcnDeployError, match=r"threshold pixel_agreement = 1.5: must be between 0 and 1"):
        thresholds_for("fp16", pixel_agreement=1.5)
    assert parse_sizes("97x129, 333X517") == [(97, 129), (333, 517)]
    for bad, why in (("97", "write HEIGHTxWIDTH"), ("axb", "write HEIGHTxWIDTH"), ("0x10", "must be positive"), ("", "no sizes given")):
        with pytest.raises(FcnDeployError, match=why):
            parse_sizes(bad)
    assert main(["validate", str(tiny_onnx), "-r", str(tiny_checkpoint), "--sizes", "10x10"]) == 2
    assert "outside the engine's profile" in capsys.readouterr().err
    assert main(["validate", str(tiny_onnx), "-r", str(tmp_path / "none.pt")]) == 2


def test_inputs_are_images_not_noise(tmp_path):
    from PIL import Image

    source = InputSource()
    batch = source.batch(50, 70, 2, 0)
    assert batch.shape == (2, 50, 70, 3) and batch.dtype == np.uint8
    assert not np.array_equal(batch[0], batch[1])
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(folder / "a.png")
    real = InputSource(folder).batch(64, 64, 1, 0)
    assert real.shape == (1, 64, 64, 3) and (real == 200).all()
    with pytest.raises(FcnDeployError, match="no images"):
        InputSource(tmp_path / "missing")


def test_mask_from_logits_is_argmax_including_ties():
    from fcn_deploy.backends import mask_from_logits

    rng = np.random.default_rng(1)
    for shape in [(2, 5, 37, 41), (1, 1, 8, 8), (1, 21, 16, 16)]:
        logits = rng.normal(size=shape).astype(np.float32)
        logits[..., :4, :4] = 0.0  # ties: the first maximum wins, as np.argmax
        np.testing.assert_array_equal(mask_from_logits(logits), np.argmax(logits, axis=1))


def test_options_that_do_not_go_together_are_refused_before_any_work(tiny_checkpoint, capsys):
    assert main(["validate", "--server", "127.0.0.1:1", "-r", str(tiny_checkpoint), "--emulate-fp16"]) == 2
    assert "--emulate-fp16 runs a checkpoint in float16 here; it does not apply to --server" in capsys.readouterr().err
    assert main(["benchmark", "--server", "127.0.0.1:1", "--html", "page.html"]) == 2
    assert "with --server, write --report JSON" in capsys.readouterr().err
