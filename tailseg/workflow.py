"""Stage-level functions that the ZenML steps call, one per step, so steps stay thin and the
whole flow can run (and be tested) without ZenML."""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from tailseg import plots
from tailseg.config import RunConfig
from tailseg.dataset import Chip, find_pairs, load_chip
from tailseg.errors import DatasetNotFoundError
from tailseg.evaluate import (
    at_sweep_end,
    best_threshold,
    evaluate_probabilities,
    predict_chips,
    threshold_sweep,
)
from tailseg.gate import Comparison, pooled_on, unseen_test_chips
from tailseg.model import model_multiple
from tailseg.overlaps import apply_overlaps, overlap_groups, read_footprints
from tailseg.sites import evaluate_sites, raster_row_areas
from tailseg.split import PARTS, split_record
from tailseg.train import train_members
from tailseg.tune import apply_best, tune

logger = logging.getLogger(__name__)


def chips_for(config: RunConfig, chip_ids: list[str]) -> list[Chip]:
    """Load the named chips (already validated) in the given order."""
    pairs = {pair.chip_id: pair for pair in find_pairs(config.data.data_dir)[0]}
    missing = [i for i in chip_ids if i not in pairs]
    if missing:
        raise DatasetNotFoundError(f"{config.data.data_dir}: chips {missing} disappeared "
                                   "since validation")
    chips = [load_chip(pairs[i], config.data.convention) for i in chip_ids]
    if config.data.overlaps == "merge":  # the labels of the chips sharing their ground too
        chips, _ = apply_overlaps(chips, list(pairs.values()), "merge")
    return chips


def row_areas_for(config: RunConfig, chip_ids: list[str]) -> list:
    """Pixel area (m2) per row of each named chip, from its mask's georeferencing."""
    pairs = {pair.chip_id: pair for pair in find_pairs(config.data.data_dir)[0]}
    return [raster_row_areas(pairs[i].mask) for i in chip_ids]


def make_split(valid_ids: list[str], config: RunConfig) -> dict:
    """The recorded split of the valid chips: ids per part plus what produced it (a pure
    function of each chip's group key and the seed, see tailseg/split.py)."""
    ids = sorted(valid_ids)
    if config.data.max_chips:
        ids = ids[:config.data.max_chips]
    groups = {}
    if config.data.overlaps != "ignore":  # chips sharing ground go to one part together
        pairs = [pair for pair in find_pairs(config.data.data_dir)[0] if pair.chip_id in ids]
        groups = overlap_groups(read_footprints(pairs))
    split = split_record(ids, config.data, source=str(config.data.data_dir), groups=groups)
    logger.info("split: %s", {part: len(split[part]) for part in PARTS})
    return {**split, "data_dir": str(config.data.data_dir)}


def run_tuning(split: dict, config: RunConfig) -> dict:
    """Best hyperparameters (the configured ones when tuning is off)."""
    model_config, train_config = config.resolved_model(), config.training
    if not config.tuning.enabled:
        return {"tuned": False, "best_params": {
            "learning_rate": train_config.learning_rate, "batch_size": train_config.batch_size,
            "loss": train_config.loss, "base_filters": model_config.base_filters}}
    result = tune(chips_for(config, split["train"]), chips_for(config, split["val"]),
                  model_config, train_config, config.tuning)
    return {"tuned": True, **result}


def run_training(split: dict, hyperparameters: dict, config: RunConfig):
    """Train with the chosen hyperparameters; returns (model, history dict, curves PNG)."""
    model_config, train_config = apply_best(config.resolved_model(), config.training,
                                            hyperparameters["best_params"])
    result = train_members(chips_for(config, split["train"]), chips_for(config, split["val"]),
                           model_config, train_config)
    history = {"history": result.history, "best_epoch": result.best_epoch,
               "seconds": result.seconds, "chips_per_second": result.chips_per_second,
               "model": model_config.model_dump(), "training": train_config.model_dump(),
               **result.info}
    return result.model, history, plots.training_curves(result.history)


def keras_predict(model: keras.Model):
    """A predict function for chips of any size: the exported serving function itself, so
    evaluation scores exactly what is exported (padding included)."""
    import tensorflow as tf

    from tailseg.export import OUTPUT_NAME, serving_function

    serve = serving_function(model, model_multiple(model))
    return lambda images: serve(tf.constant(images, tf.float32))[OUTPUT_NAME].numpy()


def run_evaluation(model: keras.Model, split: dict, config: RunConfig) -> tuple[dict, dict]:
    """Choose the threshold on validation, score the test split, draw the figures.

    Returns:
        (metrics dict with pooled/per-chip test metrics, sweep, threshold,
         {"precision_recall_curve", "best_test_chips", "worst_test_chips"} PNG figures)
    """
    predict = keras_predict(model)
    batch = config.evaluation.batch_size
    if config.evaluation.threshold == "best_val_iou":
        val = chips_for(config, split["val"])
        val_sweep = threshold_sweep(val, predict_chips(predict, val, batch),
                                    config.evaluation.sweep)
        threshold = best_threshold(val_sweep)
    else:
        val_sweep, threshold = [], float(config.evaluation.threshold)
    test = chips_for(config, split["test"])
    probabilities = predict_chips(predict, test, batch)
    metrics = evaluate_probabilities(test, probabilities, threshold)
    metrics["sites"] = evaluate_sites(test, probabilities, threshold,
                                      row_areas_for(config, split["test"]))
    sweep = threshold_sweep(test, probabilities, config.evaluation.sweep)
    metrics |= {"test_sweep": sweep, "val_sweep": val_sweep,
                "threshold_selection": str(config.evaluation.threshold),
                "threshold_at_sweep_end": bool(val_sweep) and at_sweep_end(threshold, val_sweep)}
    figures = plots.evaluation_figures(test, probabilities, metrics, sweep,
                                       config.evaluation.panels)
    return metrics, figures


def compare_with_production(test_metrics: dict, split: dict, production_model: keras.Model,
                            production_split: dict, production_threshold: float,
                            config: RunConfig) -> Comparison:
    """Re-evaluate the production model on this run's test chips that it neither trained nor
    validated on, and pool the candidate's per-chip counts over the same chips."""
    chip_ids = unseen_test_chips(split, production_split)
    logger.info("comparing with production on %d of %d test chips", len(chip_ids),
                len(split["test"]))
    production = {"iou": float("nan")}
    if chip_ids:
        chips = chips_for(config, chip_ids)
        production = evaluate_probabilities(
            chips, predict_chips(keras_predict(production_model), chips,
                                 config.evaluation.batch_size), production_threshold)
    return Comparison(chip_ids=chip_ids, candidate=pooled_on(test_metrics, chip_ids),
                      production=production)


def resolve_paths(config: RunConfig, root: Path) -> RunConfig:
    """Config with data_dir and export_dir made absolute against root."""
    data_dir = (root / config.data.data_dir).resolve()
    export_dir = (root / config.export.export_dir).resolve()
    return config.model_copy(update={
        "data": config.data.model_copy(update={"data_dir": str(data_dir)}),
        "export": config.export.model_copy(update={"export_dir": str(export_dir)})})
