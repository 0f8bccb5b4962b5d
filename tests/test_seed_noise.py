"""The seed yardstick of benchmarks/seed_noise.py: which runs count, and the keep rule."""

from __future__ import annotations

import json

import pytest

from benchmarks.seed_noise import (
    beyond_noise,
    collect,
    option_and_seed,
    paired_standard_error,
    standard_error,
    summary,
    yardstick,
)


def _write(path, variants: dict[str, tuple[float, list[float]]], folds=5, epochs=12,
           minutes=None, **extra):
    path.write_text(json.dumps({
        "folds": folds, "epochs_per_fold": epochs, "minutes_per_fold": minutes, **extra,
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


def test_seed_runs_of_an_option_are_told_apart_by_name():
    assert option_and_seed("default") == ("default", "base")
    assert option_and_seed("seed_7") == ("default", "7")
    assert option_and_seed("dropout_0.3") == ("dropout_0.3", "base")
    assert option_and_seed("dropout_0.3_seed_11") == ("dropout_0.3", "11")
    assert option_and_seed("dropout_0.3_ema_0.99_seed_7") == ("dropout_0.3_ema_0.99", "7")
    assert option_and_seed("seed_preset") == ("seed_preset", "base")  # not a seed number


def test_the_standard_error_of_a_difference_of_means_pools_both_groups():
    # squares about the means: 0.0002 + 0.0002 over 3 + 3 - 2 degrees of freedom
    expected = (0.0004 / 4) ** 0.5 * (2 / 3) ** 0.5
    assert standard_error([0.30, 0.31, 0.32], [0.40, 0.41, 0.42]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="too few"):
        standard_error([0.3], [0.4])


def _seeded(tmp_path, option_runs: dict[str, float]):
    folds = [0.3] * 5
    seeds = {"default": (0.31, folds), "seed_7": (0.29, folds), "seed_11": (0.30, folds)}
    return summary(collect([_write(tmp_path / "a.json", {
        **seeds, **{name: (value, folds) for name, value in option_runs.items()}})],
        folds=5, epochs=12))


def test_an_option_with_seed_runs_is_judged_by_its_mean_in_standard_errors(tmp_path):
    result = _seeded(tmp_path, {"drop": 0.33, "drop_seed_7": 0.32, "drop_seed_11": 0.34})
    assert set(result["seeds"]) == {"default", "seed_7", "seed_11"}
    option = result["options"]["drop"]
    assert set(result["options"]) == {"drop"}  # one entry for the three runs
    assert option["runs"] == {"base": 0.33, "7": 0.32, "11": 0.34}
    assert option["pooled_iou"] == pytest.approx(0.33)
    assert option["gain"] == pytest.approx(0.03)
    error = (0.0004 / 4) ** 0.5 * (2 / 3) ** 0.5  # 0.0082
    assert option["standard_error"] == pytest.approx(round(error, 4))
    assert option["beyond_noise"] is True  # 0.03 > 2 x 0.0082
    assert option["gain_by_seed"] == {"base": 0.02, "7": 0.03, "11": 0.04}
    assert option["better_on_seeds"] == "3 of 3"
    assert option["paired_standard_error"] == pytest.approx(0.01 / 3 ** 0.5, abs=1e-4)


def test_a_lucky_seed_does_not_carry_an_option_with_seed_runs(tmp_path):
    # one seed far above the default, the other two below it: the mean gain is under two
    # standard errors, although the base run alone would be 4 yardsticks above the seeds
    result = _seeded(tmp_path, {"lucky": 0.34, "lucky_seed_7": 0.28, "lucky_seed_11": 0.28})
    option = result["options"]["lucky"]
    assert option["beyond_noise"] is False
    assert option["worse_beyond_noise"] is False
    assert option["better_on_seeds"] == "1 of 3"
    assert option["gain"] == pytest.approx(0.0, abs=1e-4)


def test_an_option_seed_run_alone_is_an_option_of_its_own(tmp_path):
    result = _seeded(tmp_path, {"other_seed_7": 0.35})
    assert result["options"]["other_seed_7"]["beyond_noise"] is True  # 0.053 > 2 x 0.01
    assert "runs" not in result["options"]["other_seed_7"]


def test_the_paired_standard_error_needs_two_pairs():
    assert paired_standard_error([0.01]) is None
    assert paired_standard_error([0.01, 0.03]) == pytest.approx(0.01)


def test_an_option_that_spreads_over_its_seeds_needs_a_larger_gain(tmp_path):
    # gain 0.03 is three of the default's yardsticks, but the option's own spread (std 0.03)
    # widens the standard error to 0.018: under two of them
    result = _seeded(tmp_path, {"wide": 0.30, "wide_seed_7": 0.33, "wide_seed_11": 0.36})
    option = result["options"]["wide"]
    assert option["gain"] == pytest.approx(0.03)
    assert option["standard_error"] == pytest.approx(0.0183, abs=1e-4)
    assert option["beyond_noise"] is False


def test_runs_on_other_labels_or_another_cpu_are_another_protocol(tmp_path):
    folds = [0.3] * 5
    paths = [_write(tmp_path / "a.json", {"default": (0.31, folds)}),
             _write(tmp_path / "m.json", {"default": (0.43, folds)}, overlaps="merge",
                    cpu={"model": "AMD EPYC"}),
             _write(tmp_path / "i.json", {"default": (0.45, folds)}, overlaps="merge",
                    cpu={"model": "Intel(R) Xeon(R) Processor"})]
    assert collect(paths, folds=5, epochs=12)["default"]["file"] == "a.json"
    assert collect(paths, 5, 12, "merge", "AMD EPYC")["default"]["pooled_iou"] == 0.43
    with pytest.raises(ValueError, match="not one protocol"):
        collect(paths, 5, 12, "merge")  # one seed, two CPUs: two runs
