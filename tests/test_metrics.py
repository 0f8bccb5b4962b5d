"""Metrics against hand-computed values, including empty masks and predictions."""

import numpy as np
import pytest

from tailseg.metrics import Counts, confusion, scores


def test_hand_computed_counts_and_scores():
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    predicted = np.array([[1, 0, 1, 0], [1, 0, 0, 0]])
    counts = confusion(truth, predicted)
    assert counts == Counts(tp=2, fp=1, fn=1, tn=4)
    result = scores(counts)
    assert result["iou"] == pytest.approx(2 / 4)
    assert result["f1"] == pytest.approx(4 / 6)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(6 / 8)


def test_precision_and_recall_are_not_interchangeable():
    # 2 hits, 1 false alarm, 3 misses: precision 2/3 (of what was predicted), recall 2/5 (of
    # the tailings). Swapping the two formulas would swap these values.
    truth = np.array([[1, 1, 1, 1, 1, 0, 0, 0]])
    predicted = np.array([[1, 1, 0, 0, 0, 1, 0, 0]])
    result = scores(confusion(truth, predicted))
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 5)
    assert result["f1"] == pytest.approx(4 / 8) and result["iou"] == pytest.approx(2 / 6)


def test_empty_mask_and_empty_prediction_is_perfect():
    result = scores(confusion(np.zeros((3, 3)), np.zeros((3, 3))))
    assert result == {"iou": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0}


def test_empty_prediction_on_tailings_scores_zero():
    result = scores(confusion(np.eye(3), np.zeros((3, 3))))
    assert result["iou"] == 0.0 and result["recall"] == 0.0 and result["precision"] == 0.0
    assert result["accuracy"] == pytest.approx(6 / 9)


def test_false_alarm_on_empty_mask_scores_zero():
    result = scores(confusion(np.zeros((3, 3)), np.eye(3)))
    assert result["iou"] == 0.0 and result["precision"] == 0.0 and result["recall"] == 0.0


def test_all_background_prediction_beats_accuracy_but_not_iou():
    truth = np.zeros((100, 100))
    truth[:3] = 1  # 3 % tailings, like the bundled data
    result = scores(confusion(truth, np.zeros_like(truth)))
    assert result["accuracy"] == pytest.approx(0.97) and result["iou"] == 0.0


def test_valid_mask_excludes_pixels_and_shapes_must_match():
    truth, predicted = np.ones((2, 2)), np.zeros((2, 2))
    valid = np.array([[True, False], [False, False]])
    assert confusion(truth, predicted, valid) == Counts(tp=0, fp=0, fn=1, tn=0)
    with pytest.raises(ValueError, match="shape mismatch"):
        confusion(np.ones((2, 2)), np.ones((2, 3)))


def test_counts_add_up_every_field():
    assert Counts(1, 2, 3, 4) + Counts(10, 20, 30, 40) == Counts(11, 22, 33, 44)


def test_no_pixels_at_all_is_perfect_agreement():
    assert scores(Counts()) == {"iou": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0,
                                "accuracy": 1.0}
