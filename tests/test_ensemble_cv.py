"""benchmarks/ensemble_cv.py: the folds compare_quality.py saves, the mean-probability ensemble
of runs of the same folds, its threshold picked on the validation chips, and the refusal to
average runs of other folds."""

import numpy as np
import pytest

from benchmarks.compare_quality import check_save_directory, save_probabilities
from benchmarks.ensemble_cv import (
    check_same_folds,
    check_same_runs,
    cross_validate,
    load_member,
    read_run,
)
from tailseg.dataset import Chip

SIZE = 16


def _chip(chip_id: str) -> Chip:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:12, 4:12] = 1
    return Chip(chip_id, np.zeros((SIZE, SIZE, 3), np.float32), mask)


CHIPS = {f"c{i}": _chip(f"c{i}") for i in range(4)}
HOLDOUT = [_chip("h0")]
AREAS = {chip_id: np.full(SIZE, 100.0) for chip_id in [*CHIPS, "h0"]}
# One fold: validation c0, c1; test c2, c3; held out h0.
PARTS = {"val": ["c0", "c1"], "test": ["c2", "c3"], "holdout": ["h0"]}


def _member(left: float, right: float) -> list[dict]:
    """A model that gives the site's left half `left` and its right half `right`, 0.1 off it."""
    probability = np.full((SIZE, SIZE), 0.1, np.float32)
    probability[4:12, 4:8] = left
    probability[4:12, 8:12] = right
    return [{part: {chip_id: probability.copy() for chip_id in ids}
             for part, ids in PARTS.items()}]


def test_saved_folds_load_back_by_part_and_chip(tmp_path):
    val, test = [CHIPS["c0"]], [CHIPS["c2"]]
    probability = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    for fold in range(2):
        save_probabilities(tmp_path / "run" / f"fold{fold}.npz",
                           {"val": val, "test": test, "holdout": HOLDOUT},
                           {"val": [probability], "test": [probability * 0.5],
                            "holdout": [probability]})
    save_probabilities(tmp_path / "run" / "fold0_tta.npz", {"val": val, "test": test,
                                                            "holdout": HOLDOUT},
                       {"val": [probability], "test": [probability], "holdout": [probability]})
    folds = load_member(tmp_path / "run")
    assert len(folds) == 2 and sorted(folds[0]) == ["holdout", "test", "val"]
    np.testing.assert_allclose(folds[1]["test"]["c2"], probability * 0.5, atol=1e-3)
    assert len(load_member(tmp_path / "run", tta=True)) == 1
    assert not list((tmp_path / "run").glob("*partial*"))
    with pytest.raises(SystemExit, match="no fold"):
        load_member(tmp_path / "missing")


def test_an_ensemble_of_a_run_with_itself_scores_as_the_run():
    member = _member(0.8, 0.3)
    alone = cross_validate([member], CHIPS, HOLDOUT, AREAS, 0.0)
    twice = cross_validate([member, member], CHIPS, HOLDOUT, AREAS, 0.0)
    assert alone["plain"]["pooled"] == twice["plain"]["pooled"]


def test_members_that_each_miss_half_the_site_together_find_it():
    # Each member is sure of one half of the site (0.9) and puts the other half below the
    # background (0.05 against 0.1): alone, no threshold finds more than half the site (IoU
    # 0.5); their mean is 0.475 everywhere on the site, above the background.
    left, right = _member(0.9, 0.05), _member(0.05, 0.9)
    for member in (left, right):
        assert cross_validate([member], CHIPS, HOLDOUT, AREAS, 0.0)[
            "plain"]["pooled"]["iou"] == pytest.approx(0.5)
    together = cross_validate([left, right], CHIPS, HOLDOUT, AREAS, 0.0)
    assert together["plain"]["pooled"]["iou"] == pytest.approx(1.0)
    assert together["plain"]["holdout_ensemble"]["iou"] == pytest.approx(1.0)


def test_the_threshold_is_picked_on_the_validation_chips_not_the_test_chips():
    member = _member(0.8, 0.8)
    # The test chips' site is fainter (0.35) than the validation chips' (0.8): the validation
    # chips' best threshold (the one closest to 0.5 of those that tie) misses it entirely.
    for chip_id in PARTS["test"]:
        member[0]["test"][chip_id][4:12, 4:12] = 0.35
    report = cross_validate([member], CHIPS, HOLDOUT, AREAS, 0.0)
    assert report["plain"]["thresholds"] == [0.5]
    assert report["plain"]["pooled"]["iou"] == 0.0


def test_runs_of_other_folds_are_refused():
    other = _member(0.8, 0.3)
    other[0]["test"]["c1"] = other[0]["test"].pop("c2")
    with pytest.raises(SystemExit, match="fold 0 test chips differ"):
        check_same_folds({"a": _member(0.8, 0.3), "b": other})
    with pytest.raises(SystemExit, match="1 folds"):
        check_same_folds({"a": _member(0.8, 0.3) * 2, "b": other})


def test_a_run_loads_only_its_own_complete_folds(tmp_path):
    run = tmp_path / "run"
    parts = {"val": [CHIPS["c0"]], "test": [CHIPS["c2"]], "holdout": HOLDOUT}
    probability = np.full((SIZE, SIZE), 0.5, np.float32)
    for fold in range(3):  # fold2 is left from an earlier run of three folds
        save_probabilities(run / f"fold{fold}.npz", parts, {part: [probability] for part in parts})
    (run / "fold1.npz.partial.npz").write_bytes(b"killed while writing")
    assert len(load_member(run, folds=3)) == 3
    with pytest.raises(SystemExit, match=r"fold files \[0, 1, 2\], but run.json says 2 folds"):
        load_member(run, folds=2)
    with pytest.raises(SystemExit, match="run.json: missing"):
        read_run(run)
    with pytest.raises(SystemExit, match="is not empty"):
        check_save_directory(tmp_path, ["run"])
    check_save_directory(tmp_path / "new" / "place", ["run"])
    assert (tmp_path / "new" / "place").is_dir()


def test_runs_scored_on_other_labels_or_folds_are_refused():
    record = {"folds": 5, "overlaps": "merge", "data_seed": 42, "val_fraction": 0.15,
              "test_fraction": 0.1}
    a = {**record, "training_seed": 42}
    assert check_same_runs({"a": a, "b": {**record, "training_seed": 7}}) == record
    for key, other in (("overlaps", "group"), ("folds", 4), ("data_seed", 7)):
        with pytest.raises(SystemExit, match=f"b: {key}"):
            check_same_runs({"a": a, "b": {**record, "training_seed": 7, key: other}})
    # A members run of seeds 42-44 holds seed 42's model already.
    with pytest.raises(SystemExit, match="both trained seed 42"):
        check_same_runs({"a": a, "m": {**record, "training_seeds": [42, 43, 44]}})


def test_a_chip_tested_in_two_folds_is_refused():
    member = _member(0.8, 0.3) * 2
    with pytest.raises(SystemExit, match="test part of two folds"):
        check_same_folds({"a": member})


def _two_folds(val_site: float) -> list[dict]:
    """Fold 0: validation c0, test c2; fold 1: validation c1 (its site at val_site), test c3.
    Held out h0: fold 0's model marks a false site (rows 0-3) that fold 1's model does not."""
    site = np.full((SIZE, SIZE), 0.05, np.float32)
    site[4:12, 4:12] = 0.9
    false = site.copy()
    false[0:3, :] = 0.9
    faint = site.copy()
    faint[4:12, 4:12] = val_site
    return [{"val": {"c0": site}, "test": {"c2": site}, "holdout": {"h0": false}},
            {"val": {"c1": faint}, "test": {"c3": site}, "holdout": {"h0": site}}]


def test_the_held_out_ensemble_averages_every_fold_at_the_pooled_out_of_fold_threshold():
    # Fold 1's faint validation site (0.42) makes its threshold 0.40; the pooled out-of-fold
    # predictions prefer 0.50. Averaged, the held-out false site is 0.475: dropped at 0.50,
    # kept at fold 1's 0.40 or with fold 0's model alone.
    report = cross_validate([_two_folds(0.42)], CHIPS, HOLDOUT, AREAS, 0.0)["plain"]
    assert report["thresholds"] == [0.5, 0.4]
    assert report["holdout_ensemble"]["threshold"] == 0.5
    assert report["holdout_ensemble"]["iou"] == pytest.approx(1.0)
    assert report["holdout_iou_fold_models"][0] < 1.0
