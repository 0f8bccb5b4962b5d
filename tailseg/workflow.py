"""Stage-level functions that the ZenML steps call, one per step, so steps stay thin and the
whole flow can run (and be tested) without ZenML."""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from tailseg import plots
from tailseg.config import RunConfig
from tailseg.dataset import Chip, find_pairs, load_chip, split_ids
from tailseg.errors import DatasetNotFoundError
from tailseg.evaluate import (
    best_threshold,
    evaluate_probabilities,
    predict_chips,
    threshold_sweep,
)
from tailseg.model import model_multiple
from tailseg.train import train_model
from tailseg.tune import apply_best, tune

logger = logging.getLogger(__name__)


def chips_for(config: RunConfig, chip_ids: list[str]) -> list[Chip]:
    """Load the named chips (already validated) in the given order."""
    pairs = {pair.chip_id: pair for pair in find_pairs(config.data.data_dir)[0]}
    missing = [i for i in chip_ids if i not in pairs]
    if missing:
        raise DatasetNotFoundError(f"{config.data.data_dir}: chips {missing} disappeared "
                                   "since validation")
    return [load_chip(pairs[i], config.data.convention) for i in chip_ids]


def make_split(valid_ids: list[str], config: RunConfig) -> dict:
    """The recorded split: ids per part plus what produced it."""
    ids = sorted(valid_ids)
    if config.data.max_chips:
        ids = ids[:config.data.max_chips]
    split = split_ids(ids, config.data)
    logger.info("split: %s", {part: len(v) for part, v in split.items()})
    return {**split, "seed": config.data.seed, "data_dir": str(config.data.data_dir)}


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
    result = train_model(chips_for(config, split["train"]), chips_for(config, split["val"]),
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
    sweep = threshold_sweep(test, probabilities, config.evaluation.sweep)
    metrics |= {"test_sweep": sweep, "val_sweep": val_sweep,
                "threshold_selection": str(config.evaluation.threshold)}
    figures = plots.evaluation_figures(test, probabilities, metrics, sweep,
                                       config.evaluation.panels)
    return metrics, figures


def evaluate_baseline(model: keras.Model, split: dict, config: RunConfig,
                      threshold: float) -> dict:
    """Metrics of another model (the production one) on this run's test split."""
    test = chips_for(config, split["test"])
    predict = keras_predict(model)
    return evaluate_probabilities(test, predict_chips(predict, test), threshold)


def resolve_paths(config: RunConfig, root: Path) -> RunConfig:
    """Config with data_dir and export_dir made absolute against root."""
    data_dir = (root / config.data.data_dir).resolve()
    export_dir = (root / config.export.export_dir).resolve()
    return config.model_copy(update={
        "data": config.data.model_copy(update={"data_dir": str(data_dir)}),
        "export": config.export.model_copy(update={"export_dir": str(export_dir)})})
