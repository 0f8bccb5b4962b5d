"""Training: seeding, the Keras fit loop with its callbacks, and the history it leaves."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from tailseg.accelerate import AccelerationPlan, dtype_policy, plan_acceleration
from tailseg.budget import BudgetSchedule, PlannedCosineDecay, training_schedule_summary
from tailseg.config import ModelConfig, TrainConfig
from tailseg.dataset import (
    Chip,
    band_statistics,
    crops_per_epoch,
    training_dataset,
    validation_dataset,
)
from tailseg.ensemble import average_models
from tailseg.losses import get_loss
from tailseg.model import build_unet

logger = logging.getLogger(__name__)
MONITOR = "val_iou"
VAL_BATCH_PER_REPLICA = 2  # whole validation chips per replica and step


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
    best_epoch: int | list[int]  # an ensemble's: each member's
    seconds: float
    chips_per_second: float
    info: dict[str, float | int | str | bool | None] = field(default_factory=dict)


def pick_epoch(values: list[float], progress: list[float], restore_from: float) -> int:
    """The epoch (0-based) whose weights a run keeps: the best validation IoU (values) among the
    epochs that ended with the learning-rate schedule at least restore_from done (progress:
    share of the decay done at each epoch's end); the first on ties. With no such epoch (a run
    cut before that point), the best of all epochs."""
    if not values or len(values) != len(progress):
        raise ValueError(f"{len(values)} validation values for {len(progress)} epochs")
    late = [epoch for epoch, done in enumerate(progress) if done >= restore_from - 1e-9]
    candidates = late or list(range(len(values)))
    return max(candidates, key=lambda epoch: (values[epoch], -epoch))


class _BestWeights(keras.callbacks.Callback):
    """Keeps the weights pick_epoch would choose, restores them at the end, and stops the run
    once patience epochs pass without a better candidate (early stopping, counted among the
    candidates only: an early peak at a high learning rate neither wins nor stops the run).

    Reads each epoch's schedule progress (in epochs) from the BudgetSchedule, which must run
    before it."""

    def __init__(self, budget: BudgetSchedule, restore_from: float, patience: int) -> None:
        super().__init__()
        self.budget, self.restore_from, self.patience = budget, restore_from, patience
        self.values: list[float] = []
        self.progress: list[float] = []
        self.best_epoch, self.weights = -1, None

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(float((logs or {}).get(MONITOR, -np.inf)))
        self.progress.append(self.budget.epoch_progress)
        # pick_epoch's choice is always the previous one or this epoch (progress only grows),
        # so only this epoch's weights ever need copying.
        chosen = pick_epoch(self.values, self.progress, self.restore_from)
        if chosen == epoch:
            self.best_epoch, self.weights = epoch, self.model.get_weights()
        elif (self.progress[-1] >= self.restore_from - 1e-9
              and epoch - chosen >= self.patience):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.weights is not None:
            self.model.set_weights(self.weights)


def compile_model(model: keras.Model, config: TrainConfig, learning_rate=None) -> None:
    """Adam with the configured loss and the tailings IoU metric (named "iou"); with
    config.weight_average, Adam also keeps a moving average of the weights (swapped in by
    weight_average_callbacks)."""
    averaged = config.weight_average is not None
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate or config.learning_rate, use_ema=averaged,
                                        ema_momentum=config.weight_average or 0.99),
        loss=get_loss(config.loss, config.tversky_alpha, config.tversky_beta),
        metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5, name="iou")],
    )


class SwapAveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras' swap of the optimizer's averaged weights, with the batch-normalisation statistics
    averaged and swapped alongside.

    The optimizer averages only trainable variables; the moving mean and variance of each
    BatchNormalization layer follow the raw weights' activations. Averaged convolutions
    normalised by the raw weights' statistics are a model nobody trained (as timm's ModelEmaV2,
    the buffers are averaged too). Here they are averaged with the same momentum after every
    training step (the first step sets the average, as the optimizer's does) and swapped in
    and out wherever the weights are."""

    def __init__(self, momentum: float, swap_on_epoch: bool = True):
        super().__init__(swap_on_epoch=swap_on_epoch)
        self.momentum = momentum
        self._statistics: list = []
        self._averages: list[np.ndarray] | None = None

    def on_train_begin(self, logs=None):
        self._statistics = [variable for layer in self.model.layers
                            if isinstance(layer, keras.layers.BatchNormalization)
                            for variable in (layer.moving_mean, layer.moving_variance)]
        self._averages = None

    def on_train_batch_end(self, batch, logs=None):
        current = [variable.numpy() for variable in self._statistics]
        if self._averages is None:
            self._averages = current
            return
        m = self.momentum
        self._averages = [m * average + (1 - m) * value
                          for average, value in zip(self._averages, current, strict=True)]

    def _swap_variables(self):
        super()._swap_variables()
        if self._averages is None:
            return  # nothing trained yet: the statistics are the initial ones either way
        swapped = []
        for variable, average in zip(self._statistics, self._averages, strict=True):
            swapped.append(variable.numpy())
            variable.assign(average)
        self._averages = swapped


def weight_average_callbacks(config: TrainConfig) -> list[keras.callbacks.Callback]:
    """With config.weight_average, the callback that puts the averaged weights (and averaged
    batch-normalisation statistics) in the model for every validation and at every epoch's
    end (so _BestWeights, after it, keeps the weights that were validated) and the raw ones
    back for the next epoch's training."""
    if config.weight_average is None:
        return []
    return [SwapAveragedWeights(config.weight_average)]


def global_batches(config: TrainConfig, plan: AccelerationPlan) -> TrainConfig:
    """The training configuration whose batch_size is the global batch of the plan: the
    per-replica batch_size times the replicas kept in sync."""
    return config.model_copy(update={"batch_size": plan.global_batch_size(config.batch_size)})


def train_model(train_chips: list[Chip], val_chips: list[Chip], model_config: ModelConfig,
                config: TrainConfig, extra_callbacks: list | None = None,
                plan: AccelerationPlan | None = None) -> TrainResult:
    """Train a U-Net on random crops of train_chips, validating on whole val_chips.

    The learning rate follows a cosine decay that ends at the last planned epoch: config.epochs,
    or with config.max_minutes the epochs that fit the budget (tailseg.budget). The weights of
    the best validation-IoU epoch from config.restore_from of the decay on are kept (pick_epoch;
    early stopping counts from there too). Returns the trained model with its per-epoch history
    and, in info, the planned and run epochs and why the run stopped.

    config.batch_size is the batch of one replica: with several GPUs (plan, by default the one
    plan_acceleration makes for the visible devices) every step takes batch_size crops per
    replica, and an epoch has fewer steps, so it still covers the training area about once.
    """
    if not train_chips or not val_chips:
        raise ValueError("training needs at least one training and one validation chip")
    seed_everything(config.seed)
    plan = plan or plan_acceleration(config.mixed_precision)
    logger.debug("training on %s", plan.describe())  # the devices are logged at INFO by the plan
    # The plan's policy (mixed_float16 on tensor-core GPUs) holds for building and training
    # only: the previous global policy is back afterwards, whatever happens.
    with dtype_policy(plan.policy):
        mean, std = band_statistics(train_chips)
        batches = global_batches(config, plan)
        steps = crops_per_epoch(train_chips, batches)
        schedule = PlannedCosineDecay(config.learning_rate, decay_steps=steps * config.epochs)
        with plan.strategy.scope():
            model = build_unet(model_config, mean, std)
            compile_model(model, config, learning_rate=schedule)
        # Batched by chip size, so validation chips of different sizes do not need stacking.
        val_data = validation_dataset(val_chips, model_config.multiple,
                                      plan.global_batch_size(VAL_BATCH_PER_REPLICA), plan.replicas)
        budget = BudgetSchedule(schedule, steps, config.epochs, config.max_minutes)
        best = _BestWeights(budget, config.restore_from, config.early_stopping_patience)
        # In this order: best keeps the weights the swap puts in place and reads the progress
        # budget records. With averaging, fit ends by overwriting the weights with the
        # optimizer's averages (after an early stop, the swapped-out raw weights): either way
        # best's restore at on_train_end comes after that and decides.
        callbacks = weight_average_callbacks(config) + [budget, best]
        started = time.monotonic()
        fit = model.fit(training_dataset(train_chips, batches), epochs=config.epochs,
                        steps_per_epoch=steps, validation_data=val_data,
                        shuffle=False,
                        callbacks=callbacks + (extra_callbacks or []), verbose=config.verbose)
    seconds = time.monotonic() - started
    epochs_run = len(fit.history.get("loss", []))
    crops = epochs_run * steps * batches.batch_size
    equivalent_chips = crops * config.crop_size**2 / np.mean([c.mask.size for c in train_chips])
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    return TrainResult(model=model, history=history, best_epoch=best.best_epoch + 1,
                       seconds=seconds, chips_per_second=float(equivalent_chips / seconds),
                       info={**budget.summary(epochs_run), "restore_from": config.restore_from,
                             "weight_average": config.weight_average,
                             "steps_per_epoch": steps,
                             "global_batch_size": batches.batch_size,
                             **{f"accelerator_{k}": v for k, v in plan.describe().items()},
                             "band_mean": ",".join(f"{v:.5f}" for v in mean),
                             "band_std": ",".join(f"{v:.5f}" for v in std)})


# Per-member fields of train_model's info: lists in member order for an ensemble.
MEMBER_FIELDS = ("planned_epochs", "max_epochs", "epochs_run", "seconds_per_epoch",
                 "budget_limited", "final_learning_rate", "schedule_progress")
# Over the members, the first of these that any member stopped for.
STOP_PRECEDENCE = ("time_budget", "early_stopping", "completed")


def train_members(train_chips: list[Chip], val_chips: list[Chip], model_config: ModelConfig,
                  config: TrainConfig, extra_callbacks: list | None = None,
                  plan: AccelerationPlan | None = None) -> TrainResult:
    """config.members U-Nets (train_model each), member i with seed config.seed + i, averaged
    into one model (tailseg.ensemble). With one member, train_model itself.

    max_minutes is the whole ensemble's: member i gets min(max_minutes / members, time left /
    members left), so a member that overran shortens the later ones and the total stays
    within the budget (each member still runs the planner's two calibration epochs; a share
    under three epochs is logged as a WARNING). extra_callbacks see every member's fit.

    The result's info: "members", "member_schedules" (each member's seed, kept epoch, its
    validation IoU and schedule), the per-member fields (MEMBER_FIELDS) as lists, the kept
    epochs as best_epoch (a list), stop_reason over the members by STOP_PRECEDENCE, and
    schedule_completed only when every member completed. history is the first member's.
    """
    if config.members == 1:
        return train_model(train_chips, val_chips, model_config, config, extra_callbacks, plan)
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else None
    results = []
    for index in range(config.members):
        seed, share = config.seed + index, None
        if deadline is not None:
            left = max(deadline - time.monotonic(), 0.0) / 60
            share = max(min(config.max_minutes / config.members,
                            left / (config.members - index)), 1e-3)
        logger.info("training member %d of %d (seed %d%s)", index + 1, config.members, seed,
                    f", {share:.1f} min of the budget" if share else "")
        member = config.model_copy(update={"seed": seed, "max_minutes": share})
        results.append(train_model(train_chips, val_chips, model_config, member,
                                   extra_callbacks, plan))
        per_epoch = results[-1].info.get("seconds_per_epoch") or 0.0
        if index == 0 and share and 3 * per_epoch > share * 60:
            logger.warning("each of the %d members has %.1f min of training.max_minutes, under "
                           "3 epochs of %.0f s: lower training.members or raise "
                           "training.max_minutes", config.members, share, per_epoch)
    schedules = [{"seed": config.seed + index, "best_epoch": result.best_epoch,
                  "kept_val_iou": float(result.history[MONITOR][result.best_epoch - 1])
                  if result.history.get(MONITOR) else None,
                  **training_schedule_summary(result.info), "seconds": round(result.seconds, 1)}
                 for index, result in enumerate(results)]
    reasons = {schedule["stop_reason"] for schedule in schedules}
    shared = {key: value for key, value in results[0].info.items() if key not in MEMBER_FIELDS}
    return TrainResult(
        model=average_models([result.model for result in results]),
        history=results[0].history, best_epoch=[result.best_epoch for result in results],
        seconds=sum(result.seconds for result in results),
        chips_per_second=float(np.mean([result.chips_per_second for result in results])),
        info={**shared, **{key: [result.info.get(key) for result in results]
                           for key in MEMBER_FIELDS},
              "members": config.members, "member_schedules": schedules,
              "budget_minutes": config.max_minutes,  # the whole budget, shared by the members
              "stop_reason": next((reason for reason in STOP_PRECEDENCE if reason in reasons),
                                  min(reasons)),
              "schedule_completed": all(s["schedule_completed"] for s in schedules)})
