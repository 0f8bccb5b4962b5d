"""Gate logic: absolute thresholds first run, then comparison with production."""

from tailseg.config import GateConfig
from tailseg.gate import decide

METRICS = {"iou": 0.5, "f1": 0.66, "recall": 0.7}


def test_first_run_uses_absolute_thresholds_only():
    decision = decide(METRICS, GateConfig(min_iou=0.4))
    assert decision.blessed and "first model" in decision.reasons[0]
    rejected = decide(METRICS, GateConfig(min_iou=0.99))
    assert not rejected.blessed
    assert rejected.reasons == ["failed: iou >= 0.99 (value 0.5000)"]


def test_regression_beyond_tolerance_is_rejected():
    config = GateConfig(min_iou=0.1, max_regression=0.02)
    assert decide(METRICS, config, baseline={"iou": 0.51}).blessed
    decision = decide(METRICS, config, baseline={"iou": 0.6})
    assert not decision.blessed and "production" in decision.reasons[0]
    assert decision.baseline_iou == 0.6


def test_required_improvement():
    config = GateConfig(min_iou=0.1, min_improvement=0.05)
    assert not decide(METRICS, config, baseline={"iou": 0.48}).blessed
    assert decide(METRICS, config, baseline={"iou": 0.4}).blessed
