"""K-fold cross-validation: quality that does not hinge on one lucky 15-chip test split.

Folds: every chip id is hashed with the seed (SHA-256 of "cv:<seed>:<chip id>"); chips sorted
by that hash are dealt round-robin into K folds, so fold sizes differ by at most one chip and
a chip's fold depends only on its id, the seed and the set of chips. Fold i is the test set of
round i; of the other chips, the val_fraction share with the lowest second hash
("cv-val:<seed>:<chip id>") validates (best epoch, decision threshold), the rest train. Every
chip is tested exactly once, so the pooled IoU over all folds scores every chip by a model that
never saw it.

Reported: per-fold pixel and site metrics, mean and sample standard deviation of IoU and F1
across folds, and the pooled metrics (pixel counts summed over all folds' test chips).
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np

from tailseg.budget import training_schedule_summary
from tailseg.config import RunConfig
from tailseg.constants import MIN_SITE_AREA_HA
from tailseg.dataset import Chip, find_pairs, load_chips
from tailseg.errors import TailsegError
from tailseg.evaluate import (
    best_threshold,
    evaluate_probabilities,
    predict_chips,
    threshold_sweep,
)
from tailseg.metrics import Counts, counts_dict, scores
from tailseg.overlaps import apply_overlaps, group_members
from tailseg.sites import SiteCounts, raster_row_areas, site_counts, site_scores
from tailseg.train import train_members
from tailseg.tta import flip_tta
from tailseg.workflow import keras_predict

logger = logging.getLogger(__name__)
SUMMARY_METRICS = ("iou", "f1", "precision", "recall")


def _hash(salt: str, seed: int, chip_id: str) -> bytes:
    return hashlib.sha256(f"{salt}:{seed}:{chip_id}".encode()).digest()


def assign_folds(chip_ids: list[str], folds: int, seed: int,
                 groups: dict[str, str] | None = None) -> dict[str, int]:
    """{chip id: fold}: groups of chips that share ground (tailseg.overlaps) in hash order,
    each to the fold with the fewest chips so far (the lowest on ties); with single-chip
    groups that is every folds-th chip of the hash order, folds as equal as the count allows.

    Raises:
        ValueError: fewer than 2 folds, or fewer than 3 chips per fold on average (each round
            needs a test, a validation and a training chip).
    """
    ids = sorted(set(chip_ids))
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(ids) < 3 * folds:
        raise ValueError(f"{len(ids)} chips are too few for {folds} folds; use at most "
                         f"{len(ids) // 3} folds")
    members = group_members(ids, groups)
    sizes, fold_of = [0] * folds, {}
    for key in sorted(members, key=lambda key: _hash("cv", seed, key)):
        fold = sizes.index(min(sizes))
        sizes[fold] += len(members[key])
        fold_of.update(dict.fromkeys(members[key], fold))
    return fold_of


def fold_split(fold_of: dict[str, int], fold: int, val_fraction: float, seed: int,
               groups: dict[str, str] | None = None) -> dict[str, list[str]]:
    """{"train", "val", "test"}: sorted chip ids of one cross-validation round; validation
    takes whole groups in hash order until it holds val_fraction of the other chips."""
    test = sorted(c for c, f in fold_of.items() if f == fold)
    rest = [c for c, f in fold_of.items() if f != fold]
    n_val = min(len(rest) - 1, max(1, round(len(rest) * val_fraction)))
    members = group_members(rest, groups)
    val: list[str] = []
    for key in sorted(members, key=lambda key: _hash("cv-val", seed, key)):
        if len(val) >= n_val:
            break
        if len(val) + len(members[key]) < len(rest):  # keep a training chip
            val += members[key]
    return {"train": sorted(set(rest) - set(val)), "val": sorted(val), "test": test}


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def run_fold(chips: dict[str, Chip], row_areas: dict[str, np.ndarray], split: dict,
             config: RunConfig, tta: bool = False) -> tuple[dict, Counts, SiteCounts]:
    """Train on one round's training chips, choose the threshold on its validation chips,
    score its test chips (with flip_tta when tta). Returns (fold report, pooled pixel counts,
    pooled site counts)."""
    def pick(part: str) -> list[Chip]:
        return [chips[chip_id] for chip_id in split[part]]

    result = train_members(pick("train"), pick("val"), config.resolved_model(),
                           config.training)
    predict, batch = keras_predict(result.model), config.evaluation.batch_size
    predict = flip_tta(predict) if tta else predict
    if config.evaluation.threshold == "best_val_iou":
        val = pick("val")
        threshold = best_threshold(threshold_sweep(val, predict_chips(predict, val, batch),
                                                   config.evaluation.sweep))
    else:
        threshold = float(config.evaluation.threshold)
    test = pick("test")
    probabilities = predict_chips(predict, test, batch)
    metrics = evaluate_probabilities(test, probabilities, threshold)
    sites = SiteCounts()
    for chip, probability in zip(test, probabilities, strict=True):
        sites = sites + site_counts(chip.mask == 1, probability >= threshold,
                                    row_areas[chip.chip_id], min_site_ha=MIN_SITE_AREA_HA)
    report = {**{k: metrics[k] for k in SUMMARY_METRICS}, "threshold": threshold,
              "counts": metrics["counts"], "sites": site_scores(sites),
              "training": training_schedule_summary(
                  {**result.info, "best_epoch": result.best_epoch, "seconds": result.seconds}),
              **{part: split[part] for part in ("train", "val", "test")}}
    return report, Counts(**metrics["counts"]), sites


def cross_validate(config: RunConfig, folds: int, tta: bool = False) -> dict:
    """Train and score one model per fold on the dataset of config.data.

    Chips that fail to load are left out (listed under "excluded"), as in evaluation.

    Returns:
        {"folds", "seed", "n_chips", "per_fold": [...], "mean": {...}, "std": {...},
         "pooled": {...}, "sites_pooled": {...}, "excluded", "seconds"}
    """
    started = time.monotonic()
    pairs, unpaired = find_pairs(config.data.data_dir)
    if config.data.max_chips:
        pairs = pairs[:config.data.max_chips]
    loaded, excluded = load_chips(pairs, config.data.convention)
    if not loaded:
        raise TailsegError(f"{config.data.data_dir}: no usable chips for cross-validation")
    loaded, groups = apply_overlaps(loaded, pairs, config.data.overlaps)
    chips = {chip.chip_id: chip for chip in loaded}
    masks = {pair.chip_id: pair.mask for pair in pairs}
    row_areas = {chip_id: raster_row_areas(masks[chip_id]) for chip_id in chips}
    fold_of = assign_folds(list(chips), folds, config.data.seed, groups)
    per_fold, pixel_total, site_total = [], Counts(), SiteCounts()
    for fold in range(folds):
        split = fold_split(fold_of, fold, config.data.val_fraction, config.data.seed, groups)
        logger.info("fold %d/%d: %d train, %d val, %d test chips", fold + 1, folds,
                    len(split["train"]), len(split["val"]), len(split["test"]))
        report, pixels, sites = run_fold(chips, row_areas, split, config, tta)
        logger.info("fold %d/%d: test IoU %.4f, F1 %.4f at threshold %.2f", fold + 1, folds,
                    report["iou"], report["f1"], report["threshold"])
        per_fold.append({"fold": fold, **report})
        pixel_total, site_total = pixel_total + pixels, site_total + sites
    summary = {k: _mean_std([f[k] for f in per_fold]) for k in SUMMARY_METRICS}
    return {"folds": folds, "seed": config.data.seed, "n_chips": len(chips), "tta": tta,
            "assignment": "groups of chips sharing ground (single chips alone) in "
                          "sha256(cv:seed:group key) order, each to the fold with the fewest "
                          "chips", "overlaps": config.data.overlaps,
            "mean": {k: m for k, (m, _) in summary.items()},
            "std": {k: s for k, (_, s) in summary.items()},
            "pooled": {**scores(pixel_total), "counts": counts_dict(pixel_total)},
            "sites_pooled": site_scores(site_total), "per_fold": per_fold,
            "excluded": excluded | unpaired, "seconds": time.monotonic() - started}
