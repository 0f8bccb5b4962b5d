"""Segmentation metrics of the tailings class, from pixel confusion counts.

Conventions for empty denominators: when neither the mask nor the prediction has tailings, IoU,
F1, precision and recall are 1 (perfect agreement); when only one side is empty, the undefined
ratio is 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    """Pixel confusion counts of the tailings class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                      self.tn + other.tn)


def confusion(truth: np.ndarray, predicted: np.ndarray, valid: np.ndarray | None = None) -> Counts:
    """Count pixels; truth and predicted are boolean-like arrays of one shape."""
    truth = np.asarray(truth).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    if truth.shape != predicted.shape:
        raise ValueError(f"shape mismatch: truth {truth.shape} vs prediction {predicted.shape}")
    if valid is not None:
        truth, predicted = truth[valid], predicted[valid]
    tp = int(np.count_nonzero(truth & predicted))
    fp = int(np.count_nonzero(~truth & predicted))
    fn = int(np.count_nonzero(truth & ~predicted))
    tn = int(truth.size - tp - fp - fn)
    return Counts(tp, fp, fn, tn)


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def scores(counts: Counts) -> dict[str, float]:
    """IoU, F1 (= Dice), precision, recall and pixel accuracy of the tailings class."""
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn
    nothing = tp + fp + fn == 0
    total = tp + fp + fn + tn
    return {
        "iou": _ratio(tp, tp + fp + fn, nothing),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, nothing),
        "precision": _ratio(tp, tp + fp, fn == 0),
        "recall": _ratio(tp, tp + fn, fp == 0),
        "accuracy": (tp + tn) / total if total else 1.0,
    }


def counts_dict(counts: Counts) -> dict[str, int]:
    return asdict(counts)
