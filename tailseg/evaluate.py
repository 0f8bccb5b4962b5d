"""Evaluation of any predictor (Keras model, SavedModel, ONNX, server) on labelled chips."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from tailseg.dataset import Chip
from tailseg.metrics import Counts, confusion, counts_dict, scores

logger = logging.getLogger(__name__)
PredictFn = Callable[[np.ndarray], np.ndarray]


def predict_chips(predict: PredictFn, chips: list[Chip], batch_size: int = 4) -> list[np.ndarray]:
    """Probabilities (H, W) per chip; chips of one size are batched together."""
    probabilities: list[np.ndarray | None] = [None] * len(chips)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, chip in enumerate(chips):
        by_shape.setdefault(chip.image.shape, []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            output = predict(np.stack([chips[i].image for i in batch]).astype(np.float32))
            for i, probability in zip(batch, output, strict=True):
                probabilities[i] = np.asarray(probability)[..., 0]
    return probabilities  # type: ignore[return-value]


def evaluate_probabilities(chips: list[Chip], probabilities: list[np.ndarray],
                           threshold: float = 0.5) -> dict:
    """Pooled and per-chip metrics of the tailings class at a decision threshold.

    Returns:
        {"iou", "f1", "precision", "recall", "accuracy", "threshold", "n_chips",
         "counts", "per_chip": [{"chip_id", metrics..., "counts", "tailings_fraction",
         "predicted_fraction"}]}
    """
    pooled, per_chip = Counts(), []
    for chip, probability in zip(chips, probabilities, strict=True):
        counts = confusion(chip.mask == 1, probability >= threshold)
        pooled = pooled + counts
        per_chip.append({"chip_id": chip.chip_id, **scores(counts), "counts": counts_dict(counts),
                         "tailings_fraction": float(np.mean(chip.mask == 1)),
                         "predicted_fraction": float(np.mean(probability >= threshold))})
    return {**scores(pooled), "threshold": threshold, "n_chips": len(chips),
            "counts": counts_dict(pooled), "per_chip": per_chip}


def evaluate_predictor(predict: PredictFn, chips: list[Chip], threshold: float = 0.5,
                       batch_size: int = 4) -> dict:
    """predict_chips followed by evaluate_probabilities."""
    return evaluate_probabilities(chips, predict_chips(predict, chips, batch_size), threshold)


def threshold_sweep(chips: list[Chip], probabilities: list[np.ndarray],
                    thresholds: list[float]) -> list[dict]:
    """Pooled metrics at each threshold (the precision-recall curve)."""
    rows = []
    for threshold in sorted(thresholds):
        pooled = Counts()
        for chip, probability in zip(chips, probabilities, strict=True):
            pooled = pooled + confusion(chip.mask == 1, probability >= threshold)
        rows.append({"threshold": float(threshold), **scores(pooled)})
    return rows


def best_threshold(sweep: list[dict], metric: str = "iou") -> float:
    """The threshold with the highest metric; ties go to the one closest to 0.5.

    A choice at either end of a sweep of several thresholds is logged as a warning: the best
    threshold may lie beyond the sweep.
    """
    best = float(max(sweep, key=lambda row: (row[metric], -abs(row["threshold"] - 0.5)))
                 ["threshold"])
    if at_sweep_end(best, sweep):
        logger.warning("threshold %.2f is at the end of the sweep %.2f-%.2f: the best %s may lie "
                       "beyond it; extend evaluation.sweep", best, sweep[0]["threshold"],
                       sweep[-1]["threshold"], metric)
    return best


def at_sweep_end(threshold: float, sweep: list[dict]) -> bool:
    """Whether threshold is the lowest or highest of a sweep of more than one threshold."""
    thresholds = [row["threshold"] for row in sweep]
    return len(thresholds) > 1 and threshold in (min(thresholds), max(thresholds))
