"""The seed yardstick of benchmarks/seed_noise.py: which runs count, and the keep rule."""

from __future__ import annotations

import json

import pytest

from benchmarks.seed_noise import beyond_noise, collect, summary, yardstick


def _write(path, variants: dict[str, tuple[float, list[float]]], folds=5, epochs=12,
           minutes=None):
    path.write_text(json.dumps({
        "folds": folds, "epochs_per_fold": epochs, "minutes_per_fold": minutes,
        "variants": {name: {"plain": {"pooled": {"iou": pooled}, "per_fold_iou": per_fold}}
                     for name, (pooled, per_fold) in variants.items()}}))
    return path


def test_a_gain_counts_only_beyond_k_yardsticks():
    assert not beyond_noise(0.02, 0.01)  # exactly two yardsticks: not beyond
    assert beyond_noise(0.0201, 0.01)
    assert not beyond_noise(0.03, 0.01, k=3.0)
    assert not beyond_noise(-0.05, 0.01)


def test_the_yardstick_needs_two_seed_runs():
    with pytest.raises(ValueError, match="two or more seed runs"):
        yardstick([0.3])
    assert yardstick([0.30, 0.32, 0.34]) == pytest.approx(0.02)


def test_only_runs_of_the_same_protocol_are_compared(tmp_path):
    folds = [0.3] * 5
    paths = [_write(tmp_path / "a.json", {"default": (0.31, folds), "seed_7": (0.29, folds)}),
             _write(tmp_path / "b.json", {"longer": (0.40, folds)}, epochs=34),
             _write(tmp_path / "c.json", {"budget": (0.40, folds)}, minutes=5.0),
             _write(tmp_path / "d.json", {"three_folds": (0.40, folds[:3])}, folds=3),
             _write(tmp_path / "e.json", {"default": (0.3104, folds), "dropout": (0.33, folds)})]
    found = collect(paths, folds=5, epochs=12)
    assert set(found) == {"default", "seed_7", "dropout"}
    assert found["default"]["file"] == "a.json"  # the first file's run, the later one agrees


def test_a_variant_that_does_not_reproduce_across_files_is_refused(tmp_path):
    folds = [0.3] * 5
    paths = [_write(tmp_path / "a.json", {"default": (0.31, folds)}),
             _write(tmp_path / "b.json", {"default": (0.33, folds)})]
    with pytest.raises(ValueError, match=r"b\.json.*'default'.*a\.json"):
        collect(paths, folds=5, epochs=12)


def test_gains_are_measured_from_the_seeds_mean_in_yardsticks(tmp_path):
    paths = [_write(tmp_path / "a.json", {
        "default": (0.31, [0.30, 0.32, 0.31, 0.30, 0.32]),
        "seed_7": (0.29, [0.28, 0.30, 0.29, 0.28, 0.30]),
        "seed_11": (0.30, [0.29, 0.31, 0.30, 0.29, 0.31]),
        "small_gain": (0.315, [0.3] * 5), "big_gain": (0.35, [0.3] * 5),
        "big_loss": (0.27, [0.3] * 5)})]
    result = summary(collect(paths, folds=5, epochs=12))
    assert result["seeds"] == {"default": 0.31, "seed_7": 0.29, "seed_11": 0.30}
    assert result["seed_mean"] == pytest.approx(0.30)
    assert result["seed_std"] == pytest.approx(0.01)
    assert result["seed_range"] == pytest.approx(0.02)
    assert result["per_fold_seed_std"] == pytest.approx([0.01] * 5)
    assert list(result["options"]) == ["big_gain", "small_gain", "big_loss"]  # by gain
    assert result["options"]["big_gain"] == {"pooled_iou": 0.35, "gain": 0.05,
                                             "in_yardsticks": 5.0, "beyond_noise": True,
                                             "worse_beyond_noise": False}
    assert result["options"]["small_gain"]["beyond_noise"] is False
    assert result["options"]["small_gain"]["worse_beyond_noise"] is False
    assert result["options"]["big_loss"]["worse_beyond_noise"] is True
    assert result["options"]["big_loss"]["beyond_noise"] is False
    assert result["options"]["small_gain"]["in_yardsticks"] == pytest.approx(1.5)
