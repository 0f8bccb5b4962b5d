"""Training: seeding, the Keras fit loop with its callbacks, and the history it leaves."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from tailseg.accelerate import plan_acceleration
from tailseg.config import ModelConfig, TrainConfig
from tailseg.dataset import (
    Chip,
    band_statistics,
    crops_per_epoch,
    evaluation_arrays,
    training_dataset,
)
from tailseg.losses import get_loss
from tailseg.model import build_unet

logger = logging.getLogger(__name__)
MONITOR = "val_iou"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow/Keras random generators."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    seconds: float
    chips_per_second: float
    info: dict[str, float | int | str] = field(default_factory=dict)


class _BestWeights(keras.callbacks.Callback):
    """Keep the weights of the epoch with the best validation IoU; restore them at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.best, self.best_epoch, self.weights = -np.inf, -1, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(MONITOR, -np.inf)
        if value > self.best:
            self.best, self.best_epoch, self.weights = value, epoch, self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


class _TimeLimit(keras.callbacks.Callback):
    """Stop after the epoch during which the time budget ran out."""

    def __init__(self, minutes: float | None) -> None:
        super().__init__()
        self.deadline = time.monotonic() + minutes * 60 if minutes else None

    def on_epoch_end(self, epoch, logs=None):
        if self.deadline and time.monotonic() > self.deadline:
            logger.info("time budget reached after epoch %d; stopping", epoch + 1)
            self.model.stop_training = True


def compile_model(model: keras.Model, config: TrainConfig, learning_rate=None) -> None:
    """Adam with the configured loss and the tailings IoU metric (named "iou")."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate or config.learning_rate),
        loss=get_loss(config.loss),
        metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")],
    )


def train_model(train_chips: list[Chip], val_chips: list[Chip], model_config: ModelConfig,
                config: TrainConfig, extra_callbacks: list | None = None) -> TrainResult:
    """Train a U-Net on random crops of train_chips, validating on whole val_chips.

    The learning rate follows a cosine decay; the weights of the best validation-IoU epoch are
    kept. Returns the trained model with its per-epoch history.
    """
    if not train_chips or not val_chips:
        raise ValueError("training needs at least one training and one validation chip")
    seed_everything(config.seed)
    plan = plan_acceleration(config.mixed_precision)
    logger.info("training on %s", plan.describe())
    mean, std = band_statistics(train_chips)
    steps = crops_per_epoch(train_chips, config)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=steps * config.epochs, alpha=0.05)
    with plan.strategy.scope():
        model = build_unet(model_config, mean, std)
        compile_model(model, config, learning_rate=schedule)
    val_x, val_y = evaluation_arrays(val_chips, model_config.multiple)
    best = _BestWeights()
    callbacks = [best, _TimeLimit(config.max_minutes),
                 keras.callbacks.EarlyStopping(MONITOR, mode="max",
                                               patience=config.early_stopping_patience)]
    started = time.monotonic()
    fit = model.fit(training_dataset(train_chips, config), epochs=config.epochs,
                    steps_per_epoch=steps, validation_data=(val_x, val_y),
                    validation_batch_size=2, shuffle=False,
                    callbacks=callbacks + (extra_callbacks or []), verbose=config.verbose)
    seconds = time.monotonic() - started
    epochs_run = len(fit.history.get("loss", []))
    crops = epochs_run * steps * config.batch_size
    equivalent_chips = crops * config.crop_size**2 / train_chips[0].mask.size
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    return TrainResult(model=model, history=history, best_epoch=best.best_epoch + 1,
                       seconds=seconds, chips_per_second=equivalent_chips / seconds,
                       info={"epochs_run": epochs_run, "steps_per_epoch": steps,
                             **{f"accelerator_{k}": v for k, v in plan.describe().items()},
                             "band_mean": ",".join(f"{v:.5f}" for v in mean),
                             "band_std": ",".join(f"{v:.5f}" for v in std)})
