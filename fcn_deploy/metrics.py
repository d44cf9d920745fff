"""The FCN paper's segmentation scores, exactly as its reference scorer computes them.

One confusion matrix ``hist`` is accumulated over the whole split (rows = ground truth, columns =
prediction), with void (255) ignored, then (``n_ij`` = pixels of class i predicted as j,
``t_i = sum_j n_ij``)::

    pixel accuracy     sum_i n_ii / sum_i t_i
    mean accuracy      nanmean_i  n_ii / t_i
    mean IU            nanmean_i  n_ii / (t_i + sum_j n_ji - n_ii)
    frequency-wtd IU   sum_i t_i * IU_i / sum_i t_i

Classes absent from both ground truth and prediction give NaN IU and are left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VOID = 255


def fast_hist(label: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of one image (``int64 C x C``), ignoring labels outside ``[0, C)``."""
    label = np.asarray(label).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = (label >= 0) & (label < num_classes)
    return np.bincount(num_classes * label[keep] + pred[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass
class Scores:
    pixel_accuracy: float
    mean_accuracy: float
    mean_iu: float
    fw_iu: float
    per_class_iu: list[float]

    def to_dict(self) -> dict[str, object]:
        return {
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "mean_iu": self.mean_iu,
            "fw_iu": self.fw_iu,
            "per_class_iu": self.per_class_iu,
        }


def scores_from_hist(hist: np.ndarray) -> Scores:
    hist = np.asarray(hist, dtype=np.float64)
    diag = np.diag(hist)
    truth = hist.sum(1)
    pred = hist.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_acc = diag / truth
        iu = diag / (truth + pred - diag)
        total = hist.sum()
        pixel_acc = diag.sum() / total if total else float("nan")
        freq = truth / total if total else np.full_like(truth, np.nan)
        fw_iu = float((freq[freq > 0] * iu[freq > 0]).sum()) if total else float("nan")
        mean_acc = float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else float("nan")
        mean_iu = float(np.nanmean(iu)) if np.isfinite(iu).any() else float("nan")
    return Scores(float(pixel_acc), mean_acc, mean_iu, fw_iu, [float(v) for v in iu])


class ConfusionMeter:
    """Accumulates one confusion matrix over a whole split."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.hist = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, label: np.ndarray, pred: np.ndarray) -> None:
        self.hist += fast_hist(label, pred, self.num_classes)

    def scores(self) -> Scores:
        return scores_from_hist(self.hist)
