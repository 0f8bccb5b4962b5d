"""The time budget shapes the schedule: the epoch planner on hand-made timings, and tiny real
training runs whose cosine decay ends at the last epoch run, or that say they were cut."""

import logging
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from tailseg import budget
from tailseg.budget import PlannedCosineDecay, plan_epochs
from tailseg.config import ModelConfig, TrainConfig
from tailseg.dataset import load_chips, require_pairs
from tailseg.train import train_model
from tests.rasters import make_dataset

# --- the planner -----------------------------------------------------------------------------


def test_first_epoch_plans_from_its_own_time():
    # 300 s budget, 95 % usable = 285 s; 30 s spent; 255 s left fit 8 more 30 s epochs.
    plan = plan_epochs([30.0], budget_seconds=300, max_epochs=60)
    assert plan.planned_epochs == 9
    assert plan.seconds_per_epoch == 30.0 and plan.budget_limited


def test_second_epoch_replans_from_the_steady_time_and_may_grow():
    # The first epoch (tracing) is left out of the estimate: 10 s per epoch,
    # 285 - 40 = 245 s left fit 24 more.
    plan = plan_epochs([30.0, 10.0], 300, 60, current_plan=9)
    assert plan.planned_epochs == 26 and plan.seconds_per_epoch == 10.0


def test_after_calibration_the_plan_never_grows():
    # Faster epochs would fit 39, but the decay already follows 26: growing would raise the lr.
    plan = plan_epochs([30.0, 10.0, 5.0, 5.0], 300, 60, current_plan=26)
    assert plan.planned_epochs == 26


def test_from_the_third_epoch_the_plan_never_grows():
    # The boundary is right after calibration: 3 done, 7.5 s steady epochs would fit 35.
    plan = plan_epochs([30.0, 10.0, 5.0], 300, 60, current_plan=26)
    assert plan.planned_epochs == 26


def test_a_slower_machine_shrinks_the_plan():
    # Mean of the last three steady epochs = 50/3 s; 285 - 80 = 205 s left fit 12 more.
    plan = plan_epochs([30.0, 10.0, 20.0, 20.0], 300, 60, current_plan=26)
    assert plan.planned_epochs == 16


def test_max_epochs_caps_the_plan_and_is_not_budget_limited():
    plan = plan_epochs([2.0, 1.0], 3600, 60)
    assert plan.planned_epochs == 60 and not plan.budget_limited


def test_the_plan_never_falls_below_the_epochs_already_run():
    assert plan_epochs([100.0, 100.0, 100.0], 200, 60, current_plan=10).planned_epochs == 3


def test_a_slow_first_epoch_still_plans_a_second_to_measure_the_steady_time():
    # The first epoch (tracing) alone eats the budget's usable share; epoch 2 is still planned.
    assert plan_epochs([9.0], 9.0, 60).planned_epochs == 2
    assert plan_epochs([9.0], 9.0, 1).planned_epochs == 1


@pytest.mark.parametrize(("args", "message"), [(([], 100, 10), "at least one measured epoch"),
                                             (([1.0], 0, 10), "must be positive"),
                                             (([1.0], 100, 0), "must be positive")])
def test_planner_rejects_nonsense(args, message):
    with pytest.raises(ValueError, match=message):
        plan_epochs(*args)


def test_any_positive_budget_and_sub_second_epochs_are_planned_as_measured():
    # A one-second budget is a budget (0.95 s usable, 0.85 s left: 8 more 0.1 s epochs);
    # quarter-second epochs are counted as such (9.5 - 0.75 = 8.75 s left: 35 more).
    assert plan_epochs([0.1], 1.0, 10).planned_epochs == 9
    plan = plan_epochs([0.5, 0.25], 10.0, 100)
    assert plan.seconds_per_epoch == 0.25 and plan.planned_epochs == 2 + 35


def test_a_plan_that_fits_exactly_max_epochs_is_not_budget_limited():
    # Half of 100 s usable, 20 s spent, 30 s left: exactly the 3 epochs that reach max_epochs 5.
    plan = plan_epochs([10.0, 10.0], 100, 5, safety=0.5)
    assert plan.planned_epochs == 5 and not plan.budget_limited
    assert plan_epochs([10.0, 10.0], 100, 6, safety=0.5).budget_limited


def test_the_plan_never_falls_below_the_epochs_already_run_even_under_an_older_plan():
    # Four epochs done under a plan of two (the plan was cut): the plan is at least four.
    assert plan_epochs([1.0] * 4, 100, 60, current_plan=2).planned_epochs == 4


def test_planned_cosine_decay_ends_at_alpha_and_follows_a_changed_length():
    schedule = PlannedCosineDecay(1.0, decay_steps=100, alpha=0.05)
    assert float(schedule(0)) == pytest.approx(1.0)
    assert float(schedule(50)) == pytest.approx(0.525)  # half-way: (1 + alpha) / 2
    assert float(schedule(100)) == pytest.approx(0.05)
    schedule.decay_steps.assign(50.0)
    assert float(schedule(50)) == pytest.approx(0.05) and schedule.progress(50) == 1.0
    restored = PlannedCosineDecay.from_config(schedule.get_config())
    assert float(restored(25)) == pytest.approx(0.525)
    # Past the planned end (a run whose plan shrank) the rate stays at its floor.
    assert float(schedule(80)) == pytest.approx(0.05) and schedule.progress(80) == 1.0


# --- the callback alone, on a simulated clock -------------------------------------------------


def _drive(durations, max_minutes, monkeypatch, max_epochs=400, steps=2):
    """Run BudgetSchedule by hand (no training) with epoch i taking durations[i] s on the
    budget's clock, until it stops the run. Returns the callback and its plan after each
    epoch."""
    now = [1000.0]
    monkeypatch.setattr(budget, "clock", lambda: now[0])
    callback = budget.BudgetSchedule(PlannedCosineDecay(1e-2, max_epochs * steps), steps,
                                     max_epochs, max_minutes)
    model = SimpleNamespace(stop_training=False, optimizer=SimpleNamespace(
        iterations=keras.Variable(0, dtype="int64", trainable=False)))
    callback.set_model(model)
    callback.on_train_begin()
    plans = []
    for epoch, seconds in enumerate(durations):
        callback.on_epoch_begin(epoch)
        now[0] += seconds
        model.optimizer.iterations.assign((epoch + 1) * steps)
        callback.on_epoch_end(epoch)
        plans.append(callback.planned)
        if model.stop_training:
            break
    return callback, plans


def test_the_callback_plans_from_the_first_epoch_including_tracing(monkeypatch):
    # 57 s usable: after a 12 s first epoch 1 + floor(45 / 12) = 4; after a 6 s second epoch
    # 2 + floor(39 / 6) = 8.
    callback, plans = _drive([12.0] + [6.0] * 20, 1, monkeypatch)
    assert plans == [4, 8, 8, 8, 8, 8, 8, 8]
    assert callback.summary(len(plans))["stop_reason"] == "completed"


def test_the_console_says_what_was_planned_and_why_a_run_was_cut(monkeypatch, caplog):
    # 10 min budget, 570 s usable: 5 epochs planned after 100 s epochs 1 and 2; epoch 3 stalls
    # to 700 s, so the run stops after 3 of 5 planned, with 6 of the decay's 10 steps done.
    with caplog.at_level(logging.INFO, logger="tailseg.budget"):
        callback, plans = _drive([100.0, 100.0, 700.0], 10, monkeypatch, steps=2)
    assert plans == [5, 5, 3] and callback.model.stop_training
    messages = [r.getMessage() for r in caplog.records]
    assert ("time budget 10.0 min: planned 5 of at most 400 epochs (100.0 s per epoch "
            "measured)") in messages, messages
    assert ("time budget of 10.0 min reached after epoch 3 of 5 planned: the run stopped before "
            "its learning-rate decay completed (60% of the schedule done); raise "
            "training.max_minutes or lower training.epochs") in messages, messages
    assert callback.epoch_progress == pytest.approx(0.6)
    info = callback.summary(3)
    assert info["budget_minutes"] == 10.0 and info["max_epochs"] == 400
    assert (info["planned_epochs"], info["stop_reason"]) == (5, "time_budget")
    assert isinstance(info["planned_epochs"], int)  # an epoch count, also in the run's JSON


def test_a_run_ended_before_its_plan_by_early_stopping_says_so(monkeypatch):
    callback, plans = _drive([12.0] + [6.0] * 20, 1, monkeypatch)
    assert plans[-1] == 8
    info = callback.summary(6)  # the validation IoU stopped improving at epoch 6 of 8
    assert info["stop_reason"] == "early_stopping" and not info["schedule_completed"]
    assert info["budget_minutes"] == 1.0


def test_the_summary_epoch_time_leaves_out_the_first_epoch():
    callback = budget.BudgetSchedule(PlannedCosineDecay(1e-2, 20), 2, 10, None)
    assert callback.summary(0)["seconds_per_epoch"] == 0.0
    callback.epoch_seconds = [12.0]
    assert callback.summary(1)["seconds_per_epoch"] == 12.0  # the only one: tracing included
    callback.epoch_seconds = [12.0, 6.0, 9.0]
    assert callback.summary(3)["seconds_per_epoch"] == 7.5
    assert callback.summary(3)["budget_minutes"] is None


def test_a_first_epoch_over_the_budget_stops_the_run_with_a_warning(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="tailseg.budget"):
        callback, plans = _drive([70.0] + [5.0] * 10, 1, monkeypatch)
    assert plans == [1] and callback.model.stop_training
    info = callback.summary(1)
    assert info["stop_reason"] == "time_budget" and not info["schedule_completed"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("time budget of 1.0 min reached after epoch 1 of 400 planned" in m
               for m in warnings), warnings


def test_the_callback_never_grows_the_plan_when_later_epochs_get_faster(monkeypatch):
    # 10 s epochs plan 5; from epoch 3 on 1 s epochs would fit 9, then 12, but the plan stays 5
    # and the decay still ends at epoch 5.
    callback, plans = _drive([10.0, 10.0] + [1.0] * 20, 1, monkeypatch)
    assert plans == [5, 5, 5, 5, 5]
    info = callback.summary(5)
    assert info["planned_epochs"] == 5 and info["schedule_completed"]
    assert info["stop_reason"] == "completed"


# --- real (tiny) training runs ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_chips(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("budget"), n_chips=4, size=32, seed=3)
    chips, _ = load_chips(require_pairs(root))
    return chips


def _config(**overrides) -> TrainConfig:
    values = {"epochs": 400, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 32,
              "learning_rate": 1e-2, "verbose": 0, "early_stopping_patience": 400}
    return TrainConfig(**(values | overrides))


TINY = ModelConfig(base_filters=2, depth=2, dropout=0)


class _SimulatedTime(keras.callbacks.Callback):
    """Real training, simulated epoch durations: each epoch takes `seconds` on the budget's
    clock (plus `stall` extra in epoch `stall_epoch`), whatever the load of the test machine."""

    def __init__(self, seconds: float, stall_epoch: int = -1, stall: float = 0.0) -> None:
        super().__init__()
        self.now, self.seconds, self.stall_epoch, self.stall = 1000.0, seconds, stall_epoch, stall
        self.learning_rates: list[float] = []  # at the start of each epoch

    def clock(self) -> float:
        return self.now

    def on_epoch_begin(self, epoch, logs=None):  # runs after BudgetSchedule's epoch start
        self.now += self.seconds + (self.stall if epoch == self.stall_epoch else 0.0)
        self.learning_rates.append(float(self.model.optimizer.learning_rate))


def _train(chips, config, simulated: _SimulatedTime, monkeypatch):
    monkeypatch.setattr(budget, "clock", simulated.clock)
    return train_model(chips[:3], chips[3:], TINY, config, extra_callbacks=[simulated])


def test_a_small_budget_plans_fewer_epochs_and_completes_the_decay(tiny_chips, monkeypatch):
    # 1 min budget, 57 s usable, 10 s epochs: 5 epochs planned after epoch 1 and again after 2.
    result = _train(tiny_chips, _config(max_minutes=1), _SimulatedTime(10.0), monkeypatch)
    info = result.info
    assert info["budget_limited"] and info["planned_epochs"] == 5
    assert info["epochs_run"] == 5 == len(result.history["loss"])
    assert info["stop_reason"] == "completed" and info["schedule_completed"]
    # The learning rate at the last step run is the end of the schedule: alpha * lr.
    assert info["schedule_progress"] == 1.0
    assert info["final_learning_rate"] == pytest.approx(0.05 * 1e-2, rel=1e-4)
    assert info["seconds_per_epoch"] == pytest.approx(10.0)


def test_a_faster_second_epoch_stretches_the_plan(tiny_chips, monkeypatch):
    # Epoch 1 takes 30 s (tracing), the rest 5 s: planned 2 after epoch 1 (minimum), then
    # 2 + floor((57 - 35) / 5) = 6 after epoch 2; the decay is stretched to end at epoch 6.
    simulated = _SimulatedTime(5.0, stall_epoch=0, stall=25.0)
    info = _train(tiny_chips, _config(max_minutes=1), simulated, monkeypatch).info
    assert (info["planned_epochs"], info["epochs_run"]) == (6, 6)
    assert info["schedule_completed"] and info["schedule_progress"] == 1.0
    # The first two epochs follow the 400-epoch decay, so stretching the plan from 2 to 6
    # never raises the learning rate.
    rates = simulated.learning_rates + [info["final_learning_rate"]]
    assert all(b <= a for a, b in zip(rates, rates[1:], strict=False)), rates
    assert rates[2] == pytest.approx(1e-2 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 2 / 6))),
                                     rel=1e-4)


def test_without_a_budget_the_configured_epochs_are_the_plan(tiny_chips):
    result = train_model(tiny_chips[:3], tiny_chips[3:], TINY, _config(epochs=3))
    info = result.info
    assert (info["planned_epochs"], info["epochs_run"], info["stop_reason"]) == (3, 3,
                                                                                 "completed")
    assert info["schedule_completed"] and not info["budget_limited"]
    assert info["final_learning_rate"] == pytest.approx(0.05 * 1e-2, rel=1e-4)


def test_a_run_cut_by_the_budget_says_so(tiny_chips, monkeypatch, caplog):
    # 5 epochs planned; epoch 3 stalls for a minute, so the budget runs out with the decay
    # still planned for 5 epochs.
    simulated = _SimulatedTime(10.0, stall_epoch=2, stall=60.0)
    with caplog.at_level(logging.WARNING, logger="tailseg.budget"):
        result = _train(tiny_chips, _config(max_minutes=1), simulated, monkeypatch)
    info = result.info
    assert (info["epochs_run"], info["planned_epochs"]) == (3, 5)
    assert info["stop_reason"] == "time_budget" and not info["schedule_completed"]
    assert info["schedule_progress"] == pytest.approx(3 / 5)
    assert info["final_learning_rate"] > 0.05 * 1e-2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reached after epoch 3 of 5 planned" in m and "decay completed" in m
               for m in warnings), warnings


def test_model_card_states_planned_and_run_epochs_and_a_cut():
    from tailseg.model_card import render_model_card

    metrics = {"iou": 0.4, "f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.9}
    common = {"best_epoch": 7, "seconds": 1200.0, "seconds_per_epoch": 150.0, "max_epochs": 60}

    def card(**training):
        return render_model_card("tailseg", 1, {}, {"test": []}, metrics, 0.5,
                                 common | training, {"blessed": True, "reasons": []})

    shaped = card(planned_epochs=8, epochs_run=8, budget_minutes=21, stop_reason="completed")
    assert ("Epochs run: 8, planned 8 of at most 60 to fit a 21-minute budget; the "
            "learning-rate schedule completed") in shaped
    cut = card(planned_epochs=8, epochs_run=5, budget_minutes=21, stop_reason="time_budget")
    assert "Epochs run: 5, planned 8" in cut and "**cut by the time budget" in cut
    assert "moving average" not in shaped
    averaged = card(planned_epochs=8, epochs_run=8, stop_reason="completed", weight_average=0.99)
    assert "Kept epoch: 7 (best validation IoU), moving average of the weights (momentum 0.99)" \
        in averaged


def test_the_schedule_summary_rounds_times_but_not_the_weight_average():
    from tailseg.budget import training_schedule_summary

    summary = training_schedule_summary({"seconds": 12.3456, "weight_average": 0.999,
                                         "band_mean": "0.1,0.2", "epochs_run": 3})
    assert summary == {"seconds": 12.35, "weight_average": 0.999, "epochs_run": 3}


def test_run_report_warns_when_the_budget_cut_the_schedule():
    from pipelines.cli import _run_report

    training = {"epochs_run": 5, "planned_epochs": 8, "best_epoch": 4}
    cut = _run_report({"run": "r", "status": "completed",
                       "training": training | {"stop_reason": "time_budget"}})
    assert "5 of 8 planned epochs" in cut and "WARNING: training was cut by the time budget" in cut
    done = _run_report({"run": "r", "status": "completed",
                        "training": training | {"epochs_run": 8, "stop_reason": "completed"}})
    assert "WARNING" not in done


def test_run_report_shows_a_quick_stage_as_taking_time():
    from pipelines.cli import _run_report

    report = _run_report({"run": "r", "status": "completed", "seconds": 754.0,
                          "stages": {"data_splitter": 0.047, "model_trainer": 12.34}})
    assert "completed in 12 min 34 s." in report
    assert "data_splitter 0.05 s, model_trainer 12.3 s" in report
