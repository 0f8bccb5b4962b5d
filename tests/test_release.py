"""Release rules on an oracle model whose probability is the image's first band, so every
score below is known by hand: the threshold is chosen on validation chips only, and the
production model is re-evaluated on this run's test chips that it never trained on."""

import keras
import numpy as np
import pytest

from tailseg.config import EvaluationConfig, RunConfig
from tailseg.evaluate import best_threshold
from tailseg.workflow import compare_with_production, run_evaluation
from tests.rasters import write_image, write_mask

SIZE = 16
SWEEP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
# (tailings probability, background probability) per chip. On validation any threshold in
# (0.25, 0.35] separates them perfectly (best: 0.3); on test only (0.65, 0.75] does (best: 0.7).
CHIPS = {"val_a": (0.35, 0.25), "val_b": (0.35, 0.25),
         "test_a": (0.75, 0.65), "test_b": (0.75, 0.65), "test_c": (0.75, 0.65)}
SPLIT = {"train": [], "val": ["val_a", "val_b"], "test": ["test_a", "test_b", "test_c"]}


@pytest.fixture(scope="module")
def oracle_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    for index, (chip_id, (tailings, background)) in enumerate(CHIPS.items()):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[2:2 + 4 + index, 3:9] = 1  # a different tailings share per chip
        image = np.full((3, SIZE, SIZE), 0.1, np.float32)
        image[0] = np.where(mask == 1, tailings, background)
        write_image(root / "images" / f"{chip_id}.tif", image)
        write_mask(root / "masks" / f"{chip_id}.tif", mask)
    return root


@pytest.fixture(scope="module")
def oracle_model() -> keras.Model:
    inputs = keras.Input((None, None, 3), name="image")
    band = keras.layers.Conv2D(1, 1, use_bias=False, name="probability")(inputs)
    model = keras.Model(inputs, band)
    model.get_layer("probability").set_weights([np.array([1, 0, 0], np.float32)
                                                .reshape(1, 1, 3, 1)])
    return model


def _config(data_dir) -> RunConfig:
    # The oracle chips are stacked on one grid by construction: not overlapping exports.
    return RunConfig.model_validate({"data": {"data_dir": str(data_dir), "overlaps": "ignore"},
                                     "evaluation": {"sweep": SWEEP, "panels": 1}})


def _tailings(chip_index: int) -> int:
    return (4 + chip_index) * 6


def test_threshold_is_chosen_on_validation_chips_only(oracle_data, oracle_model):
    metrics, _ = run_evaluation(oracle_model, SPLIT, _config(oracle_data))
    assert metrics["threshold"] == pytest.approx(0.3)
    assert metrics["threshold_at_sweep_end"] is False
    assert max(metrics["val_sweep"], key=lambda row: row["iou"])["threshold"] == 0.3
    assert max(metrics["test_sweep"], key=lambda row: row["iou"])["threshold"] == 0.7
    # At 0.3 every test pixel is called tailings: IoU = tailings share of the test pixels.
    tailings = sum(_tailings(i) for i in (2, 3, 4))
    assert metrics["iou"] == pytest.approx(tailings / (3 * SIZE * SIZE))
    assert metrics["precision"] == pytest.approx(tailings / (3 * SIZE * SIZE))
    assert metrics["recall"] == pytest.approx(1.0)
    assert [row["chip_id"] for row in metrics["per_chip"]] == SPLIT["test"]


def test_production_is_re_evaluated_on_the_test_chips_it_never_trained_on(oracle_data,
                                                                         oracle_model):
    config = _config(oracle_data)
    test_metrics, _ = run_evaluation(oracle_model, SPLIT, config)
    production_split = {"train": ["test_a"], "val": ["val_a"], "test": ["val_b"]}
    comparison = compare_with_production(test_metrics, SPLIT, oracle_model, production_split,
                                         0.7, config)
    assert comparison.chip_ids == ["test_b", "test_c"]
    # Production at its own threshold 0.7 separates test_b and test_c perfectly.
    assert comparison.production["iou"] == pytest.approx(1.0)
    assert comparison.production["n_chips"] == 2
    # The candidate (threshold 0.3, everything tailings) on the same two chips.
    tailings = _tailings(3) + _tailings(4)
    assert comparison.candidate["iou"] == pytest.approx(tailings / (2 * SIZE * SIZE))
    assert comparison.candidate["iou"] != pytest.approx(test_metrics["iou"])


def test_production_that_saw_every_test_chip_leaves_nothing_to_compare(oracle_data,
                                                                      oracle_model):
    config = _config(oracle_data)
    test_metrics, _ = run_evaluation(oracle_model, SPLIT, config)
    production_split = {"train": SPLIT["test"], "val": [], "test": []}
    comparison = compare_with_production(test_metrics, SPLIT, oracle_model, production_split,
                                         0.5, config)
    assert comparison.chip_ids == []


def test_a_threshold_at_the_end_of_the_sweep_is_kept_and_warned_about(caplog):
    rising = [{"threshold": t, "iou": t} for t in (0.5, 0.95, 0.99)]
    with caplog.at_level("WARNING", logger="tailseg.evaluate"):
        assert best_threshold(rising) == 0.99
    assert ("threshold 0.99 is at the end of the sweep 0.50-0.99: the best iou may lie beyond "
            "it; extend evaluation.sweep") in caplog.text
    caplog.clear()
    peaked = [{"threshold": t, "iou": 1 - abs(t - 0.95)} for t in (0.5, 0.95, 0.99)]
    with caplog.at_level("WARNING", logger="tailseg.evaluate"):
        assert best_threshold(peaked) == 0.95
    assert caplog.text == ""


def test_ties_go_to_the_threshold_closest_to_one_half():
    flat = [{"threshold": t, "iou": 0.4} for t in (0.2, 0.45, 0.6, 0.9)]
    assert best_threshold(flat) == 0.45


def test_default_sweep_reaches_past_0_95_and_bad_sweeps_are_rejected():
    sweep = EvaluationConfig().sweep
    assert min(sweep) <= 0.01 and max(sweep) >= 0.99 and 0.5 in sweep
    for bad in ([], [0.5, 1.0], [0.0, 0.5]):
        with pytest.raises(ValueError, match="sweep"):
            EvaluationConfig(sweep=bad)


def test_a_probability_exactly_at_the_threshold_is_tailings():
    from tailseg.dataset import Chip
    from tailseg.evaluate import evaluate_probabilities, threshold_sweep

    chip = Chip("c", np.zeros((1, 2, 3), np.float32), np.array([[1, 0]], np.uint8))
    probability = np.array([[0.5, 0.25]], np.float32)
    assert evaluate_probabilities([chip], [probability])["counts"] == {
        "tp": 1, "fp": 0, "fn": 0, "tn": 1}
    rows = threshold_sweep([chip], [probability], [0.5, 0.25])
    assert [(row["threshold"], row["precision"]) for row in rows] == [(0.25, 0.5), (0.5, 1.0)]
    row = evaluate_probabilities([chip], [probability], 0.25)["per_chip"][0]
    assert row["tailings_fraction"] == 0.5 and row["predicted_fraction"] == 1.0
    assert evaluate_probabilities([chip], [probability])["threshold"] == 0.5
    for scorer in (evaluate_probabilities, lambda c, p: threshold_sweep(c, p, [0.5])):
        with pytest.raises(ValueError, match="zip"):
            scorer([chip, chip], [probability])


def test_only_the_lowest_and_highest_of_several_thresholds_are_sweep_ends():
    from tailseg.evaluate import at_sweep_end

    two = [{"threshold": 0.5}, {"threshold": 0.9}]
    assert at_sweep_end(0.9, two) and at_sweep_end(0.5, two)
    assert not at_sweep_end(0.5, [{"threshold": 0.5}])
    assert not at_sweep_end(0.7, [{"threshold": t} for t in (0.5, 0.7, 0.9)])
