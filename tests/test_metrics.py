"""The paper's scores (pixel acc, mean acc, mean IU, f.w. IU) against hand-worked and independent numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fcn_deploy.metrics import VOID, ConfusionMeter, fast_hist, scores_from_hist

from helpers import independent_scores

# A 3-class example worked by hand.  The last pixel is void and must not count.
#   GT 0: predicted 0, 0, 1      GT 1: predicted 1, 2      GT 2: predicted 2, 2, 0
LABEL = np.array([0, 0, 0, 1, 1, 2, 2, 2, VOID], dtype=np.uint8)
PRED = np.array([0, 0, 1, 1, 2, 2, 2, 0, 1], dtype=np.int64)
HIST = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]])  # rows = ground truth, columns = prediction
# t = (3, 2, 3), predicted totals = (3, 2, 3), 8 valid pixels
PIXEL_ACC = 5 / 8  # (2 + 1 + 2) / 8
MEAN_ACC = (2 / 3 + 1 / 2 + 2 / 3) / 3  # 11/18
IU = [2 / (3 + 3 - 2), 1 / (2 + 2 - 1), 2 / (3 + 3 - 2)]  # 1/2, 1/3, 1/2
MEAN_IU = sum(IU) / 3  # 4/9
FW_IU = (3 * IU[0] + 2 * IU[1] + 3 * IU[2]) / 8  # 11/24


def test_hand_worked_confusion_matrix_and_scores():
    hist = fast_hist(LABEL.reshape(3, 3), PRED.reshape(3, 3), 3)
    np.testing.assert_array_equal(hist, HIST)  # also pins the orientation: rows are ground truth
    s = scores_from_hist(hist)
    assert s.pixel_accuracy == pytest.approx(PIXEL_ACC)
    assert s.mean_accuracy == pytest.approx(11 / 18)
    assert s.mean_accuracy == pytest.approx(MEAN_ACC)
    assert s.per_class_iu == pytest.approx(IU)
    assert s.mean_iu == pytest.approx(4 / 9)
    assert s.fw_iu == pytest.approx(11 / 24)
    assert s.fw_iu == pytest.approx(FW_IU)
    assert set(s.to_dict()) == {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "per_class_iu"}


def test_void_pixels_are_ignored_whatever_is_predicted():
    base = fast_hist(LABEL, PRED, 3)
    label = np.concatenate([LABEL, np.full(50, VOID, np.uint8)])
    pred = np.concatenate([PRED, np.random.default_rng(0).integers(0, 3, 50)])
    np.testing.assert_array_equal(fast_hist(label, pred, 3), base)
    assert base.sum() == 8  # 9 pixels, one void


def test_class_absent_from_gt_and_prediction_is_nan_and_left_out_of_means():
    hist = fast_hist(LABEL, PRED, 4)  # class 3 never appears
    s = scores_from_hist(hist)
    assert math.isnan(s.per_class_iu[3])
    assert s.per_class_iu[:3] == pytest.approx(IU)
    assert s.mean_iu == pytest.approx(4 / 9)  # the nanmean over the 3 present classes, not 4/9 * 3/4
    assert s.mean_accuracy == pytest.approx(11 / 18)
    assert s.pixel_accuracy == pytest.approx(5 / 8)
    assert s.fw_iu == pytest.approx(11 / 24)


def test_class_predicted_but_absent_from_gt_counts_as_zero_iu():
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])  # class 2 is a false positive only
    s = scores_from_hist(fast_hist(label, pred, 3))
    assert s.per_class_iu == pytest.approx([1 / 2, 1.0, 0.0])
    assert s.mean_iu == pytest.approx(0.5)  # (1/2 + 1 + 0) / 3: the false-positive class is included
    assert s.mean_accuracy == pytest.approx((1 / 2 + 1) / 2)  # class 2 has no GT: NaN acc, left out
    assert s.pixel_accuracy == pytest.approx(3 / 4)


def test_empty_matrix_gives_nan_scores_without_crashing():
    s = scores_from_hist(np.zeros((3, 3), np.int64))
    assert all(math.isnan(v) for v in (s.pixel_accuracy, s.mean_accuracy, s.mean_iu, s.fw_iu))


def _random_pairs(seed: int, num_classes: int):
    rng = np.random.default_rng(seed)
    pairs = []
    for h, w in [(5, 7), (16, 16), (9, 31), (1, 40)]:
        label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.15] = VOID
        pred = np.where(rng.random((h, w)) < 0.6, label % num_classes, rng.integers(0, num_classes, (h, w)))
        pairs.append((label, pred))
    return pairs


def test_accumulating_images_equals_one_matrix_over_the_concatenation():
    pairs = _random_pairs(1, 5)
    meter = ConfusionMeter(5)
    for label, pred in pairs:
        meter.update(label, pred)
    all_labels = np.concatenate([p[0].ravel() for p in pairs])
    all_preds = np.concatenate([p[1].ravel() for p in pairs])
    np.testing.assert_array_equal(meter.hist, fast_hist(all_labels, all_preds, 5))
    assert meter.scores() == scores_from_hist(fast_hist(all_labels, all_preds, 5))
    # ... which is not the mean of per-image scores (the paper scores the split, not images)
    per_image = np.mean([scores_from_hist(fast_hist(labels, preds, 5)).mean_iu for labels, preds in pairs])
    assert not np.isclose(per_image, meter.scores().mean_iu)


def test_agrees_with_an_independent_set_counting_implementation():
    num_classes = 5
    pairs = _random_pairs(2, num_classes)
    meter = ConfusionMeter(num_classes)
    for label, pred in pairs:
        meter.update(label, pred)
    expected = independent_scores(np.concatenate([p[0].ravel() for p in pairs]), np.concatenate([p[1].ravel() for p in pairs]),
                                  num_classes, VOID)  # fmt: skip
    s = meter.scores()
    assert s.pixel_accuracy == pytest.approx(expected["pixel_accuracy"])
    assert s.per_class_iu == pytest.approx(expected["per_class_iu"], nan_ok=True)
    assert s.mean_iu == pytest.approx(expected["mean_iu"])
    assert s.mean_accuracy == pytest.approx(expected["mean_accuracy"])
    assert s.fw_iu == pytest.approx(expected["fw_iu"])
