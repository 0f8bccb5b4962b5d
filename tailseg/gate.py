"""The release gate: absolute thresholds, then no regression against the production model.

Like TFX's Evaluator: value thresholds always apply; change thresholds apply only when a
baseline (the model version in the production stage) exists. The two models are compared on
the same chips, and only on chips that neither of them trained or chose its threshold on: this
run's test chips minus the production model's training and validation chips. With the stable
split (tailseg/split.py) that is all of this run's test chips, unless the production model was
trained with another seed, other fractions or an older split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tailseg.config import GateConfig
from tailseg.metrics import Counts, scores


@dataclass(frozen=True)
class Comparison:
    """Both models scored on the same chips, each at its own decision threshold."""

    chip_ids: list[str]
    candidate: dict[str, float]
    production: dict[str, float]


@dataclass(frozen=True)
class GateDecision:
    blessed: bool
    reasons: list[str]
    checks: list[dict] = field(default_factory=list)
    baseline_iou: float | None = None
    candidate_iou_on_compared: float | None = None
    compared_chips: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def unseen_test_chips(split: dict, production_split: dict) -> list[str]:
    """This run's test chips that the production model neither trained nor validated on."""
    seen = set(production_split["train"]) | set(production_split["val"])
    return [chip for chip in split["test"] if chip not in seen]


def pooled_on(metrics: dict, chip_ids: list[str]) -> dict[str, float]:
    """Pooled scores of evaluate_probabilities' per-chip counts, over chip_ids only."""
    wanted, pooled = set(chip_ids), Counts()
    for row in metrics["per_chip"]:
        if row["chip_id"] in wanted:
            pooled = pooled + Counts(**row["counts"])
    return scores(pooled)


def decide(metrics: dict[str, float], config: GateConfig,
           comparison: Comparison | None = None) -> GateDecision:
    """Check test metrics against the gate.

    Args:
        metrics: the candidate's pooled test metrics (absolute thresholds apply to these).
        config: the thresholds.
        comparison: both models on the chips neither trained on; None when there is no
            production model (first release: absolute thresholds only).
    """
    checks = []
    for metric, minimum in (("iou", config.min_iou), ("f1", config.min_f1),
                            ("recall", config.min_recall)):
        value = float(metrics[metric])
        checks.append({"check": f"{metric} >= {minimum}", "value": value,
                       "passed": value >= minimum})
    if comparison is not None:
        checks += _regression_checks(comparison, config)
    failed = [c for c in checks if not c["passed"]]
    if failed:
        reasons = [f"failed: {c['check']} (value {c['value']:.4f})" for c in failed]
    elif comparison is None:
        reasons = ["all checks passed (first model: absolute thresholds only)"]
    else:
        reasons = [f"all checks passed (compared with production on "
                   f"{len(comparison.chip_ids)} test chips neither model trained on)"]
    return GateDecision(
        blessed=not failed, reasons=reasons, checks=checks,
        baseline_iou=None if comparison is None else float(comparison.production["iou"]),
        candidate_iou_on_compared=None if comparison is None
        else float(comparison.candidate["iou"]),
        compared_chips=None if comparison is None else len(comparison.chip_ids))


def _regression_checks(comparison: Comparison, config: GateConfig) -> list[dict]:
    n = len(comparison.chip_ids)
    if not n:
        return [{"check": "compared with production on at least 1 test chip neither model "
                          "trained on (production was trained on another split; demote it or "
                          "restore its split seed and fractions)", "value": 0.0,
                 "passed": False}]
    delta = float(comparison.candidate["iou"]) - float(comparison.production["iou"])
    on = f" on {n} test chips neither model trained on"
    checks = [{"check": f"iou - production iou >= {-config.max_regression}{on}",
               "value": delta, "passed": delta >= -config.max_regression}]
    if config.min_improvement:
        checks.append({"check": f"iou - production iou >= {config.min_improvement}{on}",
                       "value": delta, "passed": delta >= config.min_improvement})
    return checks
