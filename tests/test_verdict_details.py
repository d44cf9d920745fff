"""The verdict's small parts, value by value: what each metric measures, pools and reports, the
names of the limits, and the edge cases (no logits, one class, no disagreement).  These pin what
the mutation run (scripts/mutation.sh) found no test reading."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from fcn_deploy.errors import FcnDeployError
from fcn_deploy.metrics import ConfusionMeter, fast_hist, scores_from_hist
from fcn_deploy.validation import metrics
from fcn_deploy.validation.thresholds import Thresholds


def prediction(mask, logits=None):
    return SimpleNamespace(mask=np.asarray(mask), logits=None if logits is None else np.asarray(logits, np.float32))


def one_hot_logits(mask: np.ndarray, classes: int, scale: float = 4.0) -> np.ndarray:
    return (np.eye(classes, dtype=np.float32)[mask] * scale).transpose(0, 3, 1, 2)


def comparison(reference_mask, engine_mask, classes=3, engine_logits="same", margin=0.5):
    reference_mask, engine_mask = np.asarray(reference_mask), np.asarray(engine_mask)
    logits = one_hot_logits(engine_mask, classes) if isinstance(engine_logits, str) else engine_logits
    return metrics.Comparison(prediction(reference_mask, one_hot_logits(reference_mask, classes)), prediction(engine_mask, logits),
                              classes, {"confidence_margin": margin})  # fmt: skip


def test_the_limits_have_names_that_say_minimum_or_maximum_and_where():
    assert metrics.limit_names() == {
        "size_floor": "minimum agreement (per size)",
        "pixel_agreement": "minimum agreement (over all sizes)",
        "confident_agreement": "minimum confident (per size)",
        "confidence_margin": "parameter of confident",
        "min_mean_iu": "minimum mIU vs ref (over all sizes)",
        "max_rel_logit_diff": "maximum max |Δlogit| (per size)",
    }
    assert metrics.fraction_limits() == {"size_floor", "pixel_agreement", "confident_agreement", "min_mean_iu"}
    assert metrics.parameter_defaults() == {"confidence_margin": 0.5}


def test_an_unknown_threshold_is_refused_with_the_known_ones():
    with pytest.raises(FcnDeployError) as caught:
        Thresholds(pixel_agreement=0.9, colour=0.5, boundary=1.0)
    known = ", ".join(sorted(metrics.limit_names()))
    assert str(caught.value) == f"unknown threshold boundary, colour; the registered metrics read {known}"
    assert caught.value.options == ("thresholds",)
    with pytest.raises(FcnDeployError, match=r"threshold size_floor = 1.5: must be between 0 and 1") as caught:
        Thresholds(size_floor=1.5)
    assert caught.value.options == ("size_floor",)
    assert Thresholds(max_rel_logit_diff=7.0)["max_rel_logit_diff"] == 7.0  # not a fraction: any value


def test_top2_margin_for_one_class_is_infinite_and_for_two_the_difference():
    one = metrics.top2_margin(np.ones((2, 1, 3, 4), np.float32))
    assert one.shape == (2, 3, 4) and one.dtype == np.float32 and np.isinf(one).all()
    two = metrics.top2_margin(np.array([[[[3.0]], [[1.0]]]], np.float32))
    assert two.shape == (1, 1, 1) and two[0, 0, 0] == pytest.approx(2.0)
    three = metrics.top2_margin(np.array([[[[3.0]], [[5.0]], [[4.5]]]], np.float32))
    assert three[0, 0, 0] == pytest.approx(0.5)


def test_near_edge_with_nothing_to_look_at_and_at_a_boundary():
    mask = np.zeros((1, 6, 6), np.int64)
    mask[0, :, 3:] = 1
    empty = metrics.near_edge(mask, (np.array([], int), np.array([], int), np.array([], int)))
    assert empty.shape == (0,) and empty.dtype == bool
    hits = metrics.near_edge(mask, (np.array([0, 0, 0]), np.array([2, 2, 2]), np.array([0, 1, 2])))
    assert hits.tolist() == [False, True, True]  # 2 px radius: columns 1 and 2 see class 1 at column 3
    assert metrics.near_edge(mask, (np.array([0]), np.array([0]), np.array([0])), radius=3).tolist() == [True]


def test_each_metric_measures_and_reports_its_fields():
    reference = np.zeros((1, 4, 5), np.int64)
    reference[0, :, 3:] = 2
    engine = reference.copy()
    engine[0, 0, 0] = 1  # one wrong pixel, far from the 0|2 boundary
    engine[0, 3, 2] = 2  # one wrong pixel on it
    c = comparison(reference, engine)
    by_key = metrics.METRICS
    agreement = by_key["pixel_agreement"]
    stats = agreement.measure(c)
    assert stats == {"pixels": 20, "agreeing": 18}
    assert agreement.case_fields(stats) == {"pixel_agreement": 0.9, "pixels": 20, "agreeing": 18}
    other = {"pixels": 10, "agreeing": 10}
    pooled = agreement.pool([stats, other])
    assert pooled == {"pixels": 30, "agreeing": 28}
    assert agreement.summary_fields(pooled, [stats, other]) == {"pixel_agreement": 28 / 30, "min_pixel_agreement": 0.9,
                                                                "disagreeing_pixels": 2}  # fmt: skip
    assert agreement.summary_fields({}, []) == {"pixel_agreement": None, "min_pixel_agreement": None, "disagreeing_pixels": 0}

    confident = by_key["confident_agreement"]
    stats = confident.measure(c)  # every reference pixel has margin 4 > 0.5
    assert stats == {"confident": 20, "confident_agreeing": 18, "pixels": 20}
    assert confident.case_fields(stats) == {
        "confident_agreement": 0.9,
        "confident_fraction": 1.0,
        "confident": 20,
        "confident_agreeing": 18,
    }
    assert confident.measure(comparison(reference, engine, margin=5.0))["confident"] == 0  # nothing is that confident
    assert confident.value({"confident": 0, "confident_agreeing": 0}) == 1.0
    assert confident.summary_fields({"confident": 0}, []) == {"confident_agreement": None}
    assert confident.summary_fields({"confident": 4, "confident_agreeing": 3}, []) == {"confident_agreement": 0.75}

    margin = by_key["max_disagree_margin"]
    assert margin.measure(c) == {"max_margin": pytest.approx(4.0)}
    assert margin.measure(comparison(reference, reference)) == {"max_margin": 0.0}

    iu = by_key["mean_iu"]
    stats = iu.measure(c)
    np.testing.assert_array_equal(stats["confusion"], fast_hist(reference, engine, 3))
    expected = float(scores_from_hist(stats["confusion"]).mean_iu)
    assert iu.summary_fields(stats, [stats]) == {"mean_iu_vs_reference": expected, "min_mean_iu": expected}
    assert iu.value({}) is None and iu.summary_fields({}, []) == {"mean_iu_vs_reference": None, "min_mean_iu": None}

    edges = by_key["disagree_near_edge"]
    stats = edges.measure(c)
    assert stats == {"near_edge": 1, "disagreeing": 2}
    assert edges.case_fields(stats) == {"disagree_near_edge": 1}
    assert edges.summary_fields(stats, [stats]) == {"disagree_near_edge_share": 0.5, "edge_radius_px": metrics.EDGE_RADIUS_PX}
    assert edges.value({"near_edge": 0, "disagreeing": 0}) is None


def test_logit_difference_with_and_without_engine_logits():
    reference = np.zeros((1, 2, 2), np.int64)
    logits = one_hot_logits(reference, 2)
    shifted = logits.copy()
    shifted[0, 1, 0, 0] += 1.5
    metric = metrics.METRICS["max_abs_logit_diff"]
    stats = metric.measure(comparison(reference, reference, classes=2, engine_logits=shifted))
    assert stats == {"max_abs_diff": pytest.approx(1.5), "sum_abs_diff": pytest.approx(1.5), "values": 8, "max_abs_reference": 4.0}
    assert metric.case_fields(stats) == {"max_abs_logit_diff": pytest.approx(1.5), "mean_abs_logit_diff": pytest.approx(1.5 / 8)}
    gate = metric.gates[0]
    assert metric.limit_for(gate, 0.1, stats) == pytest.approx(0.4)  # relative to the reference's magnitude (4)
    assert metric.limit_for(gate, 0.1, {**stats, "max_abs_reference": 0.5}) == pytest.approx(0.1)  # never below the limit itself
    masks_only = metric.measure(comparison(reference, reference, classes=2, engine_logits=None))
    assert masks_only == {"max_abs_diff": None, "sum_abs_diff": None, "values": None, "max_abs_reference": None}
    assert metric.case_fields(masks_only) == {"max_abs_logit_diff": None, "mean_abs_logit_diff": None}
    assert metric.summary_fields(stats, [stats]) == {}


def test_scores_of_a_class_never_seen_nor_predicted_raise_no_warning():
    hist = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2: absent from both
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = scores_from_hist(hist)
    assert scores.pixel_accuracy == pytest.approx(5 / 6)
    assert scores.per_class_iu[:2] == pytest.approx([3 / 4, 2 / 3]) and np.isnan(scores.per_class_iu[2])
    assert scores.mean_iu == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert scores.mean_accuracy == pytest.approx((3 / 4 + 1.0) / 2)
    assert scores.fw_iu == pytest.approx((4 / 6) * (3 / 4) + (2 / 6) * (2 / 3))
    meter = ConfusionMeter(3)
    assert meter.hist.shape == (3, 3) and meter.hist.dtype.kind in "iu" and not meter.hist.any()


def test_pooling_sums_counts_keeps_maxima_and_copies_arrays():
    metric = metrics.METRICS["max_disagree_margin"]
    first, second = (
        {"n": 2, "max_margin": 1.5, "confusion": np.ones((2, 2), np.int64)},
        {"n": 3, "max_margin": 0.5, "confusion": np.eye(2, dtype=np.int64)},
    )
    pooled = metric.pool([first, second])
    assert pooled["n"] == 5 and pooled["max_margin"] == 1.5
    np.testing.assert_array_equal(pooled["confusion"], [[2, 1], [1, 2]])
    np.testing.assert_array_equal(first["confusion"], np.ones((2, 2)))  # the cases' own arrays are left alone
    assert metric.pool([{"max_abs_diff": None}, {"max_abs_diff": None}]) == {"max_abs_diff": None}
    assert metric.pool([{"max_abs_diff": None}, {"max_abs_diff": 2.0}]) == {"max_abs_diff": 2.0}
    assert metric.pool([]) == {}
