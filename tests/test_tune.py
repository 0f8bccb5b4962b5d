"""Optuna tuning on tiny data: the search respects its budget and its result configures
training; a disabled search hands the configured values through."""

import keras
import numpy as np
import pytest

from tailseg import tune as tune_module
from tailseg.config import ModelConfig, RunConfig, TrainConfig, TuningConfig
from tailseg.dataset import load_chips, require_pairs
from tailseg.tune import apply_best, tune
from tailseg.workflow import run_tuning
from tests.rasters import make_dataset


def test_search_returns_best_params_within_the_grid(tmp_path):
    chips, _ = load_chips(require_pairs(make_dataset(tmp_path, n_chips=4, size=32)))
    config = TuningConfig(enabled=True, n_trials=3, epochs_per_trial=1, batch_sizes=[2, 4],
                          losses=["bce", "dice"], base_filters=[2, 3], timeout_minutes=5)
    train = TrainConfig(steps_per_epoch=1, crop_size=32, verbose=0)
    result = tune(chips[:3], chips[3:], ModelConfig(base_filters=2, dropout=0), train, config)
    best = result["best_params"]
    assert set(best) == {"learning_rate", "batch_size", "loss", "base_filters"}
    assert best["batch_size"] in (2, 4) and best["loss"] in ("bce", "dice")
    assert best["base_filters"] in (2, 3)
    assert 3e-4 <= best["learning_rate"] <= 5e-3
    assert len(result["trials"]) == 3
    assert result["best_value"] == max(t["value"] for t in result["trials"]
                                       if t["state"] == "COMPLETE")
    model, training = apply_best(ModelConfig(), TrainConfig(), best)
    assert model.base_filters == best["base_filters"] and training.loss == best["loss"]


def test_apply_best_rejects_unknown_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        apply_best(ModelConfig(), TrainConfig(), {"momentum": 0.9})


def test_disabled_tuning_passes_the_configured_values_through():
    config = RunConfig.model_validate({"training": {"learning_rate": 0.001, "batch_size": 4}})
    result = run_tuning({"train": [], "val": []}, config)
    assert result == {"tuned": False, "best_params": {
        "learning_rate": 0.001, "batch_size": 4, "loss": "bce_dice", "base_filters": 16}}


def test_time_budget_is_honoured_between_and_within_trials(tmp_path):
    chips, _ = load_chips(require_pairs(make_dataset(tmp_path, n_chips=3, size=32)))
    # 0.06 s: the first epoch (graph tracing included) alone takes longer.
    config = TuningConfig(enabled=True, n_trials=3, epochs_per_trial=20, batch_sizes=[2],
                          timeout_minutes=0.001)
    train = TrainConfig(steps_per_epoch=1, crop_size=32, verbose=0)
    result = tune(chips[:2], chips[2:], ModelConfig(base_filters=2, depth=2, dropout=0), train,
                  config)
    assert [t["state"] for t in result["trials"]] == ["COMPLETE"]
    assert result["trials"][0]["epochs_run"] <= 2


class _HeadByTrial(keras.callbacks.Callback):
    """After every training batch, make the output layer a constant: tailings everywhere
    (validation IoU = the tailings share) or nowhere (IoU 0), per epoch as `pattern` says."""

    def __init__(self, pattern: list[bool]):
        super().__init__()
        self.pattern, self.epoch = pattern, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        head = self.model.get_layer("probability")
        kernel, bias = head.get_weights()
        everywhere = self.pattern[self.epoch]
        head.set_weights([np.zeros_like(kernel), np.full_like(bias, 10.0 if everywhere else -10.0)])


def test_a_trials_value_is_the_validation_iou_of_the_epoch_the_run_keeps(tmp_path, monkeypatch):
    # Three epochs per trial, restore_from 0.5: the run keeps the best of epochs 2 and 3
    # (0-based 1 and 2; the first on ties). Trial 0 peaks at epoch 1, before restore_from,
    # and keeps epoch 2 (IoU 0): not the best of all epochs. Trial 1 peaks at epoch 2 and
    # ends at 0: its value is not the last epoch's. train_model runs for real, with a callback
    # that sets each epoch's validation IoU.
    chips, _ = load_chips(require_pairs(make_dataset(tmp_path, n_chips=3, size=32)))
    patterns, results = [[True, False, False], [False, True, False]], []
    train_model = tune_module.train_model

    def train_and_keep(*args, extra_callbacks, **kwargs):
        head = _HeadByTrial(patterns[len(results)])
        result = train_model(*args, extra_callbacks=[*extra_callbacks, head], **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(tune_module, "train_model", train_and_keep)
    config = TuningConfig(enabled=True, n_trials=2, epochs_per_trial=3, batch_sizes=[2],
                          losses=["bce"], timeout_minutes=5)
    train = TrainConfig(steps_per_epoch=1, crop_size=32, verbose=0, restore_from=0.5,
                        early_stopping_patience=5)
    result = tune(chips[:2], chips[2:], ModelConfig(base_filters=2, depth=2, dropout=0), train,
                  config)
    share = results[0].history["val_iou"][0]
    assert share > 0
    assert [r.history["val_iou"] for r in results] == [[share, 0.0, 0.0], [0.0, share, 0.0]]
    assert [r.best_epoch for r in results] == [2, 2]
    assert [t["value"] for t in result["trials"]] == [0.0, share]
    assert result["best_value"] == share
