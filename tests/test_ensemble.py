"""training.members: U-Nets trained with consecutive seeds and an equal share of the budget,
served as one model that outputs the mean of their probabilities, through the same export,
ONNX conversion, parity check and float32 rule as a single U-Net."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tailseg.backends import load_predictor
from tailseg.config import ModelConfig, TrainConfig
from tailseg.dataset import load_chips, require_pairs
from tailseg.ensemble import average_models, members_of
from tailseg.export import export_model, float32_model
from tailseg.model import build_unet, flops_per_pixel, model_multiple
from tailseg.train import train_members
from tests.rasters import make_dataset

X = np.random.default_rng(5).uniform(0.03, 0.4, (2, 32, 32, 3)).astype(np.float32)


def _unet(seed: int, depth: int = 2) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_unet(ModelConfig(base_filters=2, depth=depth, dropout=0), np.full(3, 0.1),
                      np.full(3, 0.05))


def test_the_ensemble_outputs_the_mean_of_its_members_and_keeps_their_rules():
    single = _unet(1)
    assert average_models([single]) is single and members_of(single) == [single]
    members = [_unet(1), _unet(2), _unet(3, depth=3)]
    outputs = [member.predict(X, verbose=0) for member in members]
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3  # other seeds, other models
    ensemble = average_models(members)
    np.testing.assert_allclose(ensemble.predict(X, verbose=0), np.mean(outputs, axis=0),
                               atol=1e-6)
    for member, output in zip(members_of(ensemble), outputs, strict=True):
        np.testing.assert_allclose(member.predict(X, verbose=0), output, atol=1e-6)
    assert model_multiple(ensemble) == 8  # the deepest member's: 3 poolings
    assert flops_per_pixel(ensemble) == pytest.approx(sum(map(flops_per_pixel, members)))
    with pytest.raises(ValueError, match="at least one"):
        average_models([])


def test_an_ensemble_exports_keeps_parity_and_reloads_as_the_same_model(tmp_path):
    from tailseg.config import TrainConfig
    from tailseg.serving.parity import check_parity
    from tailseg.train import compile_model

    members = [_unet(1), _unet(2)]
    for member in members:  # as trained: with tailseg's loss and metrics, which Keras cannot
        compile_model(member, TrainConfig())  # load unregistered (the ZenML artifact did not)
    ensemble = average_models(members)
    info = export_model(ensemble, tmp_path / "exports", "tailseg", model_multiple(ensemble))
    wide = np.random.default_rng(6).uniform(0.03, 0.4, (2, 30, 44, 3)).astype(np.float32)
    assert check_parity(info["saved_model"], info["onnx"], wide) <= 1e-4
    np.testing.assert_allclose(load_predictor(info["saved_model"])(X),
                               ensemble.predict(X, verbose=0), atol=1e-5)
    ensemble.save(tmp_path / "model.keras")  # the ZenML materializer's format
    back = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert len(members_of(back)) == 2
    np.testing.assert_allclose(back.predict(X, verbose=0), ensemble.predict(X, verbose=0),
                               atol=1e-6)


def test_a_mixed_precision_ensemble_is_served_as_float32_members():
    from tailseg.accelerate import dtype_policy

    with dtype_policy("mixed_float16"):
        mixed = [_unet(1), _unet(2)]
    ensemble = average_models(mixed)
    served = float32_model(ensemble)
    assert served is not ensemble and len(members_of(served)) == 2
    assert {layer.compute_dtype for member in members_of(served)
            for layer in member.layers} == {"float32"}
    np.testing.assert_allclose(served.predict(X, verbose=0), ensemble.predict(X, verbose=0),
                               atol=2e-2)
    plain = average_models([_unet(1), _unet(2)])
    assert float32_model(plain) is plain


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    train, _ = load_chips(require_pairs(make_dataset(root / "a", n_chips=2, size=32, seed=1)))
    val, _ = load_chips(require_pairs(make_dataset(root / "b", n_chips=1, size=32, seed=2)))
    return train, val


def test_members_train_with_consecutive_seeds_and_share_the_budget(chips):
    train, val = chips
    config = TrainConfig(epochs=2, steps_per_epoch=1, batch_size=2, crop_size=32, verbose=0,
                         members=2, seed=7, max_minutes=10)
    result = train_members(train, val, ModelConfig(base_filters=2, depth=2, dropout=0), config)
    schedules = result.info["member_schedules"]
    assert [s["seed"] for s in schedules] == [7, 8] and result.info["members"] == 2
    assert [s["budget_minutes"] for s in schedules] == [5.0, 5.0]
    assert result.info["budget_minutes"] == 10
    members = members_of(result.model)
    assert len(members) == 2
    first, second = (member.predict(val[0].image[None], verbose=0) for member in members)
    assert np.abs(first - second).max() > 1e-4
    np.testing.assert_allclose(result.model.predict(val[0].image[None], verbose=0),
                               (first + second) / 2, atol=1e-6)
    # The first member is the single model the same seed trains.
    alone = train_members(train, val, ModelConfig(base_filters=2, depth=2, dropout=0),
                          config.model_copy(update={"members": 1, "max_minutes": 5}))
    assert members_of(alone.model) == [alone.model]
    np.testing.assert_allclose(alone.model.predict(val[0].image[None], verbose=0), first,
                               atol=1e-5)


SCHEDULES = [{"seed": 42, "epochs_run": 20, "planned_epochs": 20, "best_epoch": 15,
              "kept_val_iou": 0.41, "stop_reason": "completed"},
             {"seed": 43, "epochs_run": 12, "planned_epochs": 20, "best_epoch": 9,
              "kept_val_iou": 0.38, "stop_reason": "time_budget"}]


def test_the_card_and_the_console_name_every_member_and_a_cut_one():
    from pipelines.cli import _run_report
    from tailseg.model_card import render_model_card
    from tests.test_model_card import DECISION, METRICS, split_of

    training = {"members": 2, "member_schedules": SCHEDULES, "budget_minutes": 20,
                "stop_reason": "time_budget", "seconds": 1200.0, "epochs_run": 20,
                "planned_epochs": 20, "best_epoch": 15}
    card = render_model_card("tailseg", 1, {}, split_of(5, 2, 3), METRICS, 0.35, training,
                             DECISION)
    assert "Ensemble of 2 U-Nets" in card and "10-minute share of the budget" in card
    assert "seed 43: 12 of 20 planned epochs, kept epoch 9" in card
    assert "cut by the time budget" in card
    report = _run_report({"run": "r", "status": "completed", "training": training})
    assert "2 members, seed 42: 20 of 20 planned epochs, best epoch 15; seed 43: 12 of 20" \
        in report.replace("\n", " ")
    assert "WARNING: training was cut by the time budget" in report


# --- how the members' results add up (train_model replaced by recorded results) ---------------

class _Clock:
    now = 0.0

    def monotonic(self) -> float:
        return self.now


def _fake_training(monkeypatch, runs: list[dict]):
    """train_model returning runs[i] for member i, each spending runs[i]["seconds"] on a fake
    clock; returns the configs the members were trained with."""
    import types

    import tailseg.train as train

    clock, seen = _Clock(), []

    def fake(train_chips, val_chips, model_config, config, extra_callbacks=None, plan=None):
        run = runs[len(seen)]
        seen.append(config)
        clock.now += run["seconds"]
        return train.TrainResult(
            model=_unet(len(seen)), history={"val_iou": run["val_iou"]},
            best_epoch=run["best_epoch"], seconds=run["seconds"], chips_per_second=1.0,
            info={"planned_epochs": run["planned"], "epochs_run": len(run["val_iou"]),
                  "max_epochs": 60, "stop_reason": run["stop"],
                  "schedule_completed": run["stop"] == "completed",
                  "seconds_per_epoch": run["seconds"] / len(run["val_iou"]),
                  "restore_from": 0.5})

    monkeypatch.setattr(train, "train_model", fake)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return seen


RUNS = [{"seconds": 300.0, "val_iou": [0.5, 0.2, 0.3], "best_epoch": 3, "planned": 3,
         "stop": "completed"},
        {"seconds": 100.0, "val_iou": [0.1, 0.4], "best_epoch": 2, "planned": 3,
         "stop": "early_stopping"},
        {"seconds": 200.0, "val_iou": [0.2, 0.3], "best_epoch": 2, "planned": 4,
         "stop": "completed"}]


def test_the_ensemble_record_lists_each_member_and_the_worst_stop(monkeypatch):
    from tailseg.train import train_members

    _fake_training(monkeypatch, RUNS)
    result = train_members([], [], ModelConfig(), TrainConfig(members=3))
    schedules = result.info["member_schedules"]
    # The kept epoch's validation IoU (restore_from can keep another than the best).
    assert [s["kept_val_iou"] for s in schedules] == [0.3, 0.4, 0.3]
    assert result.best_epoch == [3, 2, 2] and result.seconds == 600.0
    assert result.info["epochs_run"] == [3, 2, 2] and result.info["planned_epochs"] == [3, 3, 4]
    assert result.info["stop_reason"] == "early_stopping"  # in any member's position
    assert result.info["schedule_completed"] is False
    assert result.info["restore_from"] == 0.5  # shared fields stay scalars


def test_a_member_cut_by_the_budget_marks_the_ensemble_cut(monkeypatch):
    from tailseg.train import train_members

    cut = {**RUNS[0], "stop": "time_budget"}
    _fake_training(monkeypatch, [RUNS[2], cut])
    result = train_members([], [], ModelConfig(), TrainConfig(members=2, max_minutes=20))
    assert result.info["stop_reason"] == "time_budget"
    assert result.info["schedule_completed"] is False


def test_members_share_what_is_left_of_the_budget(monkeypatch, caplog):
    from tailseg.train import train_members

    # 30 minutes for 3 members: 10 each; the first overran to 15 (900 s), so the other two
    # share the 15 left (7.5 each); on time, the last gets its 10 again at most.
    runs = [{**RUNS[0], "seconds": 900.0}, {**RUNS[1], "seconds": 300.0}, RUNS[2]]
    seen = _fake_training(monkeypatch, runs)
    train_members([], [], ModelConfig(), TrainConfig(members=3, max_minutes=30))
    assert [config.max_minutes for config in seen] == [10.0, 7.5, 10.0]
    assert [config.seed for config in seen] == [42, 43, 44]
    # A share that fits under three epochs of the first member is named.
    seen = _fake_training(monkeypatch, [{**RUNS[0], "seconds": 300.0}, RUNS[1]])
    with caplog.at_level("WARNING"):
        train_members([], [], ModelConfig(), TrainConfig(members=2, max_minutes=8))
    assert "lower training.members or raise training.max_minutes" in caplog.text


def test_served_members_run_one_after_another():
    # In parallel, their activations add up: 650-890 bytes per pixel for 2-3 members against
    # about 400 for one U-Net, past the serving sizing (docs/serving.md). One at a time, each
    # member's input waits for the previous member's output.
    from tailseg.export import serving_function

    ensemble = average_models([_unet(1), _unet(2), _unet(3)])
    graph = serving_function(ensemble, model_multiple(ensemble)).get_concrete_function().graph
    inputs = [op for op in graph.get_operations() if op.name.startswith("member_input")]
    assert len(inputs) == 3
    assert inputs[0].control_inputs == [] and all(op.control_inputs for op in inputs[1:])


def test_the_artifact_metadata_counts_members_and_their_layers(tmp_path):
    from steps.materializers.keras_model import KerasModelMaterializer

    members = [_unet(1), _unet(2)]
    metadata = KerasModelMaterializer(str(tmp_path)).extract_metadata(average_models(members))
    assert metadata["members"] == 2
    assert metadata["layers"] == 2 * len(members[0].layers)
