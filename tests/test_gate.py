"""Gate logic: absolute thresholds first run, then comparison with production on the test chips
neither model trained on."""

import pytest

from tailseg.config import GateConfig
from tailseg.gate import Comparison, decide, pooled_on, unseen_test_chips

METRICS = {"iou": 0.5, "f1": 0.66, "recall": 0.7}


def _versus(candidate_iou: float, production_iou: float, n: int = 3) -> Comparison:
    return Comparison([f"chip_{i}" for i in range(n)], {"iou": candidate_iou},
                      {"iou": production_iou})


def test_first_run_uses_absolute_thresholds_only():
    decision = decide(METRICS, GateConfig(min_iou=0.4))
    assert decision.reasons == ["all checks passed (first model: absolute thresholds only)"]
    assert decision.blessed and decision.compared_chips is None
    rejected = decide(METRICS, GateConfig(min_iou=0.99))
    assert not rejected.blessed
    assert rejected.reasons == ["failed: iou >= 0.99 (value 0.5000)"]


def test_regression_beyond_tolerance_is_rejected():
    config = GateConfig(min_iou=0.1, max_regression=0.02)
    passed = decide(METRICS, config, _versus(0.5, 0.51))
    assert passed.blessed and passed.reasons == [
        "all checks passed (compared with production on 3 test chips neither model trained on)"]
    decision = decide(METRICS, config, _versus(0.5, 0.6))
    assert not decision.blessed and decision.reasons == [
        "failed: iou - production iou >= -0.02 on 3 test chips neither model trained on "
        "(value -0.1000)"]
    assert decision.baseline_iou == 0.6 and decision.compared_chips == 3


def test_regression_is_judged_on_the_compared_chips_not_the_whole_test_split():
    # Whole-split IoU 0.5 would pass against production's 0.45; on the shared chips the
    # candidate scores 0.3 and regresses.
    decision = decide(METRICS, GateConfig(min_iou=0.1), _versus(0.3, 0.45))
    assert not decision.blessed and decision.candidate_iou_on_compared == 0.3


def test_required_improvement():
    config = GateConfig(min_iou=0.1, min_improvement=0.05)
    assert not decide(METRICS, config, _versus(0.5, 0.48)).blessed
    assert decide(METRICS, config, _versus(0.5, 0.4)).blessed


def test_no_chip_unseen_by_both_models_rejects():
    decision = decide(METRICS, GateConfig(min_iou=0.1), _versus(0.5, 0.0, n=0))
    assert not decision.blessed and decision.reasons == [
        "failed: compared with production on at least 1 test chip neither model trained on "
        "(production was trained on another split; demote it or restore its split seed and "
        "fractions) (value 0.0000)"]
    assert decision.compared_chips == 0


def test_recall_threshold_checks_recall_not_precision():
    metrics = {"iou": 0.5, "f1": 0.6, "precision": 0.9, "recall": 0.4}
    decision = decide(metrics, GateConfig(min_iou=0.1, min_recall=0.5))
    assert not decision.blessed and decision.reasons == ["failed: recall >= 0.5 (value 0.4000)"]


def test_unseen_chips_leave_out_what_production_trained_or_validated_on():
    split = {"train": ["a", "b"], "val": ["c"], "test": ["d", "e", "f"]}
    production_split = {"train": ["a", "d"], "val": ["e"], "test": ["b", "c", "f"]}
    assert unseen_test_chips(split, production_split) == ["f"]
    assert unseen_test_chips(split, split) == ["d", "e", "f"]


def test_pooled_on_sums_the_counts_of_the_named_chips_only():
    metrics = {"per_chip": [
        {"chip_id": "d", "counts": {"tp": 2, "fp": 1, "fn": 1, "tn": 4}},
        {"chip_id": "e", "counts": {"tp": 0, "fp": 0, "fn": 6, "tn": 2}},
        {"chip_id": "f", "counts": {"tp": 4, "fp": 1, "fn": 0, "tn": 3}}]}
    pooled = pooled_on(metrics, ["d", "f"])
    assert pooled["iou"] == pytest.approx(6 / 9)
    assert pooled["precision"] == pytest.approx(6 / 8) and pooled["recall"] == pytest.approx(6 / 7)


def test_a_value_exactly_at_a_threshold_passes():
    exact = {"iou": 0.5, "f1": 0.25, "recall": 0.75}
    assert decide(exact, GateConfig(min_iou=0.5, min_f1=0.25, min_recall=0.75)).blessed
    config = GateConfig(min_iou=0.1, max_regression=0.25, min_improvement=0.25)
    assert decide(exact, config, _versus(0.5, 0.25)).blessed
    assert decide(exact, GateConfig(min_iou=0.1, max_regression=0.25), _versus(0.25, 0.5)).blessed


def test_absolute_thresholds_still_apply_next_to_the_production_comparison():
    decision = decide(METRICS, GateConfig(min_iou=0.9), _versus(0.5, 0.4))
    assert not decision.blessed and decision.reasons == ["failed: iou >= 0.9 (value 0.5000)"]
    assert [c["check"] for c in decision.checks] == [
        "iou >= 0.9", "f1 >= 0.0", "recall >= 0.0",
        "iou - production iou >= -0.02 on 3 test chips neither model trained on"]
    assert [c["passed"] for c in decision.checks] == [False, True, True, True]
