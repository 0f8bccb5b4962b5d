"""K-fold cross-validation: fold assignment rules, and a tiny real run through `tailseg cv`."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import yaml

from tailseg import crossval
from tailseg.cli import main
from tailseg.config import RunConfig
from tailseg.crossval import assign_folds, fold_split, run_fold
from tailseg.dataset import load_chips, require_pairs
from tailseg.sites import raster_row_areas
from tailseg.tta import FLIPS
from tests.rasters import make_dataset, write_mask

IDS = [f"chip_{i:03d}" for i in range(99)]


def test_folds_are_balanced_and_cover_every_chip_once():
    folds = assign_folds(IDS, 5, seed=42)
    assert sorted(folds) == IDS
    assert sorted(Counter(folds.values()).values()) == [19, 20, 20, 20, 20]


def test_fold_assignment_depends_on_the_seed_not_the_input_order():
    assert assign_folds(IDS[::-1], 5, seed=42) == assign_folds(IDS, 5, seed=42)
    assert assign_folds(IDS, 5, seed=7) != assign_folds(IDS, 5, seed=42)


def test_each_round_tests_one_fold_and_validates_on_a_share_of_the_rest():
    folds = assign_folds(IDS, 5, seed=42)
    tested = []
    for fold in range(5):
        split = fold_split(folds, fold, val_fraction=0.15, seed=42)
        parts = [set(split[p]) for p in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set().union(*parts) == set(IDS)
        assert all(folds[c] == fold for c in split["test"])
        assert len(split["val"]) == round((99 - len(split["test"])) * 0.15)
        tested += split["test"]
    assert sorted(tested) == IDS  # every chip is tested exactly once


def test_folds_and_validation_chips_follow_the_written_hash_rule():
    # Written rule: rank by sha256("cv:<seed>:<id>"), deal round-robin; of the other folds, the
    # val_fraction share lowest by sha256("cv-val:<seed>:<id>") validates.
    ids = [f"mine-{name}" for name in "qwertyuiopas"]
    seed, folds = 11, 3

    def sha(text):
        return hashlib.sha256(text.encode()).digest()

    ranked = sorted(ids, key=lambda c: sha(f"cv:{seed}:{c}"))
    expected = {chip_id: rank % folds for rank, chip_id in enumerate(ranked)}
    assert assign_folds(ids, folds, seed) == expected
    for fold in range(folds):
        test = [c for c in ids if expected[c] == fold]
        rest = sorted((c for c in ids if expected[c] != fold),
                      key=lambda c: sha(f"cv-val:{seed}:{c}"))
        assert len(rest) == 8  # 8 * 0.25 = 2 validate
        assert fold_split(expected, fold, 0.25, seed) == {
            "train": sorted(rest[2:]), "val": sorted(rest[:2]), "test": sorted(test)}


@pytest.mark.parametrize("n_chips,folds", [(10, 1), (8, 3)])
def test_too_few_chips_or_folds_are_refused(n_chips, folds):
    with pytest.raises(ValueError):
        assign_folds(IDS[:n_chips], folds, seed=0)


def test_cv_command_reports_folds_mean_std_and_pooled_iou(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_chips=6, size=32, seed=4)
    config = {"data": {"data_dir": str(data)},
              "model": {"base_filters": 2, "depth": 2, "dropout": 0.0},
              "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 32,
                           "verbose": 0},
              "evaluation": {"sweep": [0.3, 0.5, 0.7]}}
    path = tmp_path / "zenml.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"config": config}}))
    out = tmp_path / "cv.json"
    assert main(["cv", "--config", str(path), "--folds", "2", "--json", str(out),
                 "--epochs", "2", "--tta"]) == 0
    report = json.loads(out.read_text())
    assert report["folds"] == 2 and report["n_chips"] == 6 and len(report["per_fold"]) == 2
    assert report["tta"] is True
    assert sorted(c for f in report["per_fold"] for c in f["test"]) == [
        f"chip_{i:03d}" for i in range(6)]
    assert all(f["training"]["epochs_run"] == 2 for f in report["per_fold"])
    ious = [f["iou"] for f in report["per_fold"]]
    assert report["mean"]["iou"] == pytest.approx(np.mean(ious))
    assert report["std"]["iou"] == pytest.approx(np.std(ious, ddof=1))
    # Pooled IoU: pixel counts of both folds' test chips summed, not a mean of fold IoUs.
    counts = {k: sum(f["counts"][k] for f in report["per_fold"]) for k in ("tp", "fp", "fn")}
    assert report["pooled"]["iou"] == pytest.approx(
        counts["tp"] / max(1, counts["tp"] + counts["fp"] + counts["fn"]))
    assert report["sites_pooled"]["sites_labelled"] == 6  # one rectangle per synthetic chip
    assert "2-fold cross-validation over 6 chips" in capsys.readouterr().err


def test_cv_command_names_the_problem_when_folds_are_too_many(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_chips=4, size=32, seed=4)
    path = tmp_path / "zenml.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"config": {"data": {"data_dir": str(data)}}}}))
    assert main(["cv", "--config", str(path), "--folds", "3"]) == 2
    assert "too few for 3 folds" in capsys.readouterr().err


def test_cv_command_refuses_masks_that_are_not_0_and_1(tmp_path, capsys, caplog):
    data = make_dataset(tmp_path / "data", n_chips=6, size=32, seed=4)
    for path in sorted((data / "masks").iterdir()):
        mask = np.zeros((32, 32), np.uint16)
        mask[8:16, 8:16] = 256  # 0 after a cast to uint8: chips without tailings, IoU 0
        path.unlink()
        write_mask(path, mask, dtype="uint16")
    path = tmp_path / "zenml.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"config": {
        "data": {"data_dir": str(data)}, "model": {"base_filters": 2, "depth": 2},
        "training": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "crop_size": 32,
                     "verbose": 0}}}}))
    out = tmp_path / "cv.json"
    assert main(["cv", "--config", str(path), "--folds", "2", "--json", str(out)]) == 2
    assert "no usable chips" in capsys.readouterr().err and not out.exists()
    assert "chip_000.tif: uint16 mask holds values other than 0 and 1: [256]" in caplog.text


class _RecordingRedBand:
    """A predictor of fixed weights that keeps every image it is given: probability exactly
    0.5 where the red band (B4) is above 0.15 reflectance (the synthetic chips' tailings),
    0 elsewhere. Flip-equivariant, so test-time augmentation changes only what it sees."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def __call__(self, images):
        self.seen.extend(np.array(images))
        return np.where(images[..., 2:3] > 0.15, 0.5, 0.0).astype(np.float32)


@pytest.mark.parametrize("tta", [False, True])
def test_a_round_picks_its_threshold_on_validation_chips_and_tests_with_tta(tta, tmp_path,
                                                                            monkeypatch):
    # The round's model is trained for real; its predictions come from _RecordingRedBand, put
    # where run_fold makes its predict function, so the test sees which chips are predicted.
    # Rules: the threshold is swept on the validation chips only (never the test chips: that
    # would leak), the test chips are predicted after; with tta, every chip is predicted in
    # its four flips; and a probability exactly at the threshold is tailings, so each
    # labelled site (at 0.5 where the threshold is 0.5) is found.
    pairs = require_pairs(make_dataset(tmp_path / "data", n_chips=5, size=48, seed=4))
    loaded, _ = load_chips(pairs)
    chips = {chip.chip_id: chip for chip in loaded}
    row_areas = {pair.chip_id: raster_row_areas(pair.mask) for pair in pairs}
    ids = sorted(chips)
    split = {"train": ids[:2], "val": ids[2:3], "test": ids[3:]}
    config = RunConfig.model_validate({
        "data": {"data_dir": str(tmp_path / "data")},
        "model": {"base_filters": 2, "depth": 2, "dropout": 0.0},
        "training": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "crop_size": 32,
                     "verbose": 0},
        "evaluation": {"sweep": [0.3, 0.5, 0.7], "batch_size": 8}})
    predictor = _RecordingRedBand()
    monkeypatch.setattr(crossval, "keras_predict", lambda model: predictor)
    report, _, _ = run_fold(chips, row_areas, split, config, tta=tta)
    flips = FLIPS if tta else ((),)
    expected = [np.flip(chips[chip_id].image[None], axes)[0]
                for part in ("val", "test") for axes in flips for chip_id in split[part]]
    assert len(predictor.seen) == len(expected) == (4 if tta else 1) * 3
    for seen, image in zip(predictor.seen, expected, strict=True):
        np.testing.assert_array_equal(seen, image)
    # 0.3 and 0.5 tie on validation IoU; the tie goes to 0.5, where the test pixels at 0.5
    # are tailings and every labelled site is found.
    assert report["threshold"] == 0.5 and report["iou"] > 0.9
    assert report["sites"]["sites_found"] == report["sites"]["sites_labelled"] == 2
