"""The release gate: absolute thresholds, then no regression against the production model.

Like TFX's Evaluator: value thresholds always apply; change thresholds apply only when a
baseline (the model version in the production stage) exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tailseg.config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    blessed: bool
    reasons: list[str]
    checks: list[dict] = field(default_factory=list)
    baseline_iou: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def decide(metrics: dict[str, float], config: GateConfig,
           baseline: dict[str, float] | None = None) -> GateDecision:
    """Check test metrics against the gate. baseline: the production model's test metrics
    on the same test split, or None on the first run."""
    checks = []
    for metric, minimum in (("iou", config.min_iou), ("f1", config.min_f1),
                            ("recall", config.min_recall)):
        value = float(metrics[metric])
        checks.append({"check": f"{metric} >= {minimum}", "value": value,
                       "passed": value >= minimum})
    baseline_iou = None
    if baseline is not None:
        baseline_iou = float(baseline["iou"])
        delta = float(metrics["iou"]) - baseline_iou
        checks.append({"check": f"iou - production iou >= {-config.max_regression}",
                       "value": delta, "passed": delta >= -config.max_regression})
        if config.min_improvement:
            checks.append({"check": f"iou - production iou >= {config.min_improvement}",
                           "value": delta, "passed": delta >= config.min_improvement})
    failed = [c for c in checks if not c["passed"]]
    if failed:
        reasons = [f"failed: {c['check']} (value {c['value']:.4f})" for c in failed]
    else:
        reasons = ["all checks passed" + ("" if baseline is not None else
                                          " (first model: absolute thresholds only)")]
    return GateDecision(blessed=not failed, reasons=reasons, checks=checks,
                        baseline_iou=baseline_iou)
