"""A training schedule that fits its time budget instead of being cut by it.

With `training.max_minutes` set, `training.epochs` is the most epochs a run may take, not the
number it will take. The run measures its own epochs and plans how many fit the budget:

* after epoch 1 (slow: it includes graph tracing) and again after epoch 2 (steady state), the
  plan is set from the measured epoch time, up or down; at least 2 epochs are planned;
* after that the plan may only shrink (when the machine slows down), never grow;
* from the end of epoch 2 the cosine learning-rate decay is stretched or shrunk to end exactly
  at the last planned epoch, so a planned run always finishes its schedule; during the first
  two epochs it follows max_epochs (barely decaying), so the learning rate never rises;
* if the budget runs out anyway, the run stops, says so with a WARNING, and records that the
  schedule was cut (`stop_reason="time_budget"`, `schedule_completed=False`).

Validation time counts: an epoch is timed from its start to the end of its validation.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import keras
from keras import ops

logger = logging.getLogger(__name__)

CALIBRATION_EPOCHS = 2
SAFETY = 0.95  # share of the budget the plan may use; the rest absorbs timing noise


def clock() -> float:
    """Seconds on a monotonic clock. Tests replace it to give epochs exact simulated durations,
    so they check the planning rules rather than the load of the test machine."""
    return time.monotonic()


@dataclass(frozen=True)
class EpochPlan:
    """How many epochs a run plans, and the measurement behind it."""

    planned_epochs: int
    seconds_per_epoch: float
    budget_limited: bool


def plan_epochs(epoch_seconds: list[float], budget_seconds: float, max_epochs: int,
                current_plan: int | None = None, calibration_epochs: int = CALIBRATION_EPOCHS,
                safety: float = SAFETY) -> EpochPlan:
    """The number of epochs that fit the budget, given the durations of the epochs run so far.

    The epoch time is the mean of the last three epochs after the first (the first includes
    tracing), or the first epoch's when it is the only one. Never fewer epochs than already
    run, never more than max_epochs; at least calibration_epochs (the first epoch's time says
    little), and once more than calibration_epochs have run, never more than current_plan.

    Raises:
        ValueError: no epoch measured yet, or a non-positive budget or maximum.
    """
    if not epoch_seconds:
        raise ValueError("plan_epochs needs at least one measured epoch")
    if budget_seconds <= 0 or max_epochs < 1:
        raise ValueError(f"budget {budget_seconds} s and max_epochs {max_epochs} must be "
                         "positive")
    done = len(epoch_seconds)
    steady = epoch_seconds[1:] or epoch_seconds
    per_epoch = max(sum(steady[-3:]) / len(steady[-3:]), 1e-9)
    remaining = budget_seconds * safety - sum(epoch_seconds)
    fits = done + max(0, math.floor(remaining / per_epoch))
    planned = min(max_epochs, fits)
    if current_plan is not None and done > calibration_epochs:
        planned = min(planned, current_plan)
    planned = max(done, planned, min(calibration_epochs, max_epochs))
    return EpochPlan(planned, per_epoch, budget_limited=fits < max_epochs)


@keras.saving.register_keras_serializable(package="tailseg")
class PlannedCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay from initial_learning_rate to alpha * initial_learning_rate over a number of
    steps that can be changed while training (a variable read by the compiled train step)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.05):
        self.initial_learning_rate = float(initial_learning_rate)
        self.alpha = float(alpha)
        self.decay_steps = keras.Variable(float(decay_steps), dtype="float32", trainable=False,
                                          name="decay_steps")

    def __call__(self, step):
        progress = ops.minimum(ops.cast(step, "float32") / self.decay_steps, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)

    def progress(self, step: int) -> float:
        """Share of the schedule done after step optimizer steps (1.0: fully decayed)."""
        return min(float(step) / float(self.decay_steps.numpy()), 1.0)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": int(self.decay_steps.numpy()), "alpha": self.alpha}


class BudgetSchedule(keras.callbacks.Callback):
    """Plans the epochs to fit max_minutes, sets the decay length to the plan, stops the run at
    the planned epoch, and stops it with a WARNING if the budget runs out first.

    After training, `summary()` says what was planned and run.
    """

    def __init__(self, schedule: PlannedCosineDecay, steps_per_epoch: int, max_epochs: int,
                 max_minutes: float | None) -> None:
        super().__init__()
        self.schedule, self.steps, self.max_epochs = schedule, steps_per_epoch, max_epochs
        self.budget = max_minutes * 60 if max_minutes else None
        self.planned = max_epochs
        self.epoch_seconds: list[float] = []
        self.decay_steps_in_last_epoch = max_epochs * steps_per_epoch
        self.stop_reason = "completed"  # or "time_budget"; "early_stopping" in summary()
        self.budget_limited = False
        self.last_learning_rate, self.last_progress = float("nan"), 0.0
        self.epoch_progress = 0.0  # share of the planned decay's epochs done (see on_epoch_end)
        self._started = self._epoch_started = 0.0

    def on_train_begin(self, logs=None):
        self._started = clock()
        self.schedule.decay_steps.assign(float(self.max_epochs * self.steps))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = clock()
        self.decay_steps_in_last_epoch = round(float(self.schedule.decay_steps.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(clock() - self._epoch_started)
        done = epoch + 1
        # The learning rate of the last step, under the decay length this epoch followed.
        step = int(self.model.optimizer.iterations.numpy())
        self.last_learning_rate = float(self.schedule(step))
        self.last_progress = self.schedule.progress(step)
        # Counted in epochs, not optimizer steps: a loss-scaling optimizer (mixed precision)
        # does not count the steps it skips, so the last planned epoch would end below 1.
        self.epoch_progress = min(done * self.steps / self.decay_steps_in_last_epoch, 1.0)
        if self.budget is not None:
            self._replan(done)
        if done < self.planned:
            return
        self.model.stop_training = True
        if self.decay_steps_in_last_epoch != done * self.steps:
            self.stop_reason = "time_budget"
            logger.warning(
                "time budget of %.1f min reached after epoch %d of %d planned: the run stopped "
                "before its learning-rate decay completed (%.0f%% of the schedule done); raise "
                "training.max_minutes or lower training.epochs", self.budget / 60, done,
                self.decay_steps_in_last_epoch // self.steps,
                100 * done * self.steps / self.decay_steps_in_last_epoch)

    def _replan(self, done: int) -> None:
        plan = plan_epochs(self.epoch_seconds, self.budget, self.max_epochs, self.planned)
        self.budget_limited = plan.budget_limited
        if clock() - self._started > self.budget and done < self.planned:
            self.planned = done  # out of time: stop now; the decay keeps its length (cut)
            return
        if plan.planned_epochs != self.planned:
            logger.info("time budget %.1f min: planned %d of at most %d epochs (%.1f s per "
                        "epoch measured)", self.budget / 60, plan.planned_epochs,
                        self.max_epochs, plan.seconds_per_epoch)
            self.planned = plan.planned_epochs
        # The decay follows the plan once the steady epoch time is known. During calibration
        # it keeps the length of max_epochs (barely decaying), so that stretching the plan
        # after epoch 2 never raises the learning rate.
        if done >= CALIBRATION_EPOCHS:
            self.schedule.decay_steps.assign(float(self.planned * self.steps))

    def summary(self, epochs_run: int) -> dict:
        """What was planned and run.

        planned_epochs is the plan the learning rate followed in the last epoch run;
        schedule_completed says whether that epoch ended the decay; stop_reason is "completed",
        "early_stopping" (validation IoU stopped improving) or "time_budget" (cut, with a
        WARNING).
        """
        planned = self.decay_steps_in_last_epoch // self.steps
        completed = epochs_run == planned
        stop_reason = self.stop_reason if epochs_run >= self.planned else "early_stopping"
        steady = self.epoch_seconds[1:] or self.epoch_seconds or [0.0]
        return {"planned_epochs": planned, "max_epochs": self.max_epochs,
                "epochs_run": epochs_run, "stop_reason": stop_reason,
                "schedule_completed": completed, "budget_limited": self.budget_limited,
                "budget_minutes": self.budget / 60 if self.budget else None,
                "final_learning_rate": self.last_learning_rate,
                "schedule_progress": self.last_progress,
                "seconds_per_epoch": sum(steady) / len(steady)}


SUMMARY_KEYS = ("planned_epochs", "max_epochs", "epochs_run", "best_epoch", "restore_from",
                "weight_average", "stop_reason", "schedule_completed", "budget_minutes",
                "seconds_per_epoch", "seconds", "members", "member_schedules")
EXACT_KEYS = {"weight_average"}  # not rounded: 0.999 is not 1.0


def training_schedule_summary(training: dict) -> dict:
    """The schedule part of a training record (run summary, model card, export metadata)."""
    return {key: (round(value, 2) if isinstance(value, float) and key not in EXACT_KEYS
                  else value)
            for key, value in training.items() if key in SUMMARY_KEYS}
