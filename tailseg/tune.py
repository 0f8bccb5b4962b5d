"""Hyperparameter search with Optuna: learning rate, batch size, loss and base filters,
objective = best validation IoU of the tailings class, median pruning per epoch."""

from __future__ import annotations

import logging
import time

import keras
import optuna

from tailseg.config import ModelConfig, TrainConfig, TuningConfig
from tailseg.dataset import Chip
from tailseg.train import MONITOR, train_model

logger = logging.getLogger(__name__)


class _Pruning(keras.callbacks.Callback):
    """Report validation IoU to Optuna each epoch and stop a trial the pruner gives up on."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__()
        self.trial, self.pruned = trial, False

    def on_epoch_end(self, epoch, logs=None):
        self.trial.report(float((logs or {}).get(MONITOR, 0.0)), epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True


def tune(train_chips: list[Chip], val_chips: list[Chip], model_config: ModelConfig,
         train_config: TrainConfig, config: TuningConfig) -> dict:
    """Search within the trial and wall-time budget.

    The wall-time budget covers the trials themselves: Optuna starts no trial after it, and
    each trial trains with the time left as its own max_minutes, so a long trial cannot
    overrun it by more than about one epoch.

    Returns:
        {"best_params": {...}, "best_value": float,
         "trials": [{number, params, value, state, epochs_run}],
         "seconds": float}. best_params holds learning_rate, batch_size, loss, base_filters.
    """
    deadline = time.monotonic() + config.timeout_minutes * 60

    def objective(trial: optuna.Trial) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", *config.learning_rates, log=True),
            "batch_size": trial.suggest_categorical("batch_size", config.batch_sizes),
            "loss": trial.suggest_categorical("loss", config.losses),
        }
        filters = (trial.suggest_categorical("base_filters", config.base_filters)
                   if config.base_filters else model_config.base_filters)
        pruning = _Pruning(trial)
        minutes_left = max((deadline - time.monotonic()) / 60, 1e-3)
        result = train_model(
            train_chips, val_chips, model_config.model_copy(update={"base_filters": filters}),
            train_config.model_copy(update={**params, "epochs": config.epochs_per_trial,
                                            "verbose": 0, "max_minutes": minutes_left}),
            extra_callbacks=[pruning])
        value = result.history[MONITOR][result.best_epoch - 1]  # the epoch a run keeps
        trial.set_user_attr("epochs_run", len(result.history[MONITOR]))
        logger.info("trial %d: %s base_filters=%d -> val IoU %.4f%s", trial.number, params,
                    filters, value, " (pruned)" if pruning.pruned else "")
        if pruning.pruned:
            raise optuna.TrialPruned()
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
    started = time.monotonic()
    study.optimize(objective, n_trials=config.n_trials, timeout=config.timeout_minutes * 60)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError("tuning finished no trial; raise timeout_minutes or n_trials")
    best = dict(study.best_params)
    best.setdefault("base_filters", model_config.base_filters)
    return {"best_params": best, "best_value": float(study.best_value),
            "trials": [{"number": t.number, "params": t.params, "value": t.value,
                        "state": t.state.name, "epochs_run": t.user_attrs.get("epochs_run")}
                       for t in study.trials],
            "seconds": time.monotonic() - started}


def apply_best(model_config: ModelConfig, train_config: TrainConfig, best_params: dict
               ) -> tuple[ModelConfig, TrainConfig]:
    """Configs with the tuned hyperparameters applied (unknown keys rejected by pydantic)."""
    model_keys = {"base_filters"}
    model_update = {k: v for k, v in best_params.items() if k in model_keys}
    train_update = {k: v for k, v in best_params.items() if k not in model_keys}
    return (ModelConfig.model_validate({**model_config.model_dump(), **model_update}),
            TrainConfig.model_validate({**train_config.model_dump(), **train_update}))
