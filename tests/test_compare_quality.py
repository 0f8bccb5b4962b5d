"""benchmarks/compare_quality.py: the minimum-site rule it applies to pixels (tailseg.sites:
sites below the area are erased, by ellipsoidal row areas, 8-connected like the site metrics),
the false-site pixels it leaves out for the partial-label bound, and where results go."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tailseg.dataset import Chip
from tailseg.sites import drop_small_sites, false_site_pixels


def test_sites_below_the_minimum_area_are_erased_and_the_rest_kept_whole():
    predicted = np.zeros((40, 40), bool)
    predicted[2:5, 2:5] = True        # 9 pixels of 100 m2: 0.09 ha
    predicted[10:30, 10:30] = True    # 400 pixels: 4 ha
    kept = drop_small_sites(predicted, np.full(40, 100.0), min_site_ha=0.5)
    assert not kept[2:5, 2:5].any()
    assert kept[10:30, 10:30].all() and kept.sum() == 400


def test_area_follows_the_row_areas_and_diagonal_pixels_join_one_site():
    predicted = np.zeros((10, 10), bool)
    for i in range(6):                # a diagonal line: one 8-connected site of 6 pixels
        predicted[i, i] = True
    small_rows, large_rows = np.full(10, 800.0), np.full(10, 900.0)
    assert not drop_small_sites(predicted, small_rows, min_site_ha=0.5).any()   # 0.48 ha
    assert drop_small_sites(predicted, large_rows, min_site_ha=0.5).sum() == 6  # 0.54 ha


def test_a_minimum_pixel_count_erases_smaller_sites_whatever_their_area():
    predicted = np.zeros((10, 10), bool)
    predicted[0:2, 0:2] = True        # 4 pixels
    predicted[5:8, 5:8] = True        # 9 pixels
    kept = drop_small_sites(predicted, np.full(10, 1e4), min_site_pixels=5)
    assert kept.sum() == 9 and kept[5:8, 5:8].all()


def test_false_site_pixels_are_the_predicted_sites_touching_no_label():
    truth = np.zeros((12, 12), bool)
    truth[2:6, 2:6] = True
    predicted = np.zeros((12, 12), bool)
    predicted[4:8, 4:8] = True        # overlaps the label: not false, even where it spills over
    predicted[9:11, 9:11] = True      # touches no label: a false site
    predicted[8, 3] = True            # diagonal to the overlapping site: part of it (8-connected)
    false = false_site_pixels(truth, predicted)
    assert false.sum() == 4 and false[9:11, 9:11].all()
    assert false_site_pixels(truth, predicted, connectivity=4)[8, 3]  # 4-connected: apart
    assert not false_site_pixels(truth, np.zeros_like(truth)).any()


def test_the_partial_label_bound_leaves_out_only_the_false_sites_pixels():
    from benchmarks.compare_quality import score
    from tailseg.metrics import scores

    mask = np.zeros((12, 12), np.uint8)
    mask[2:6, 2:6] = 1
    probability = np.zeros((12, 12), np.float32)
    probability[4:8, 4:8] = 0.9        # tp 4, fp 12
    probability[9:11, 9:11] = 0.9      # a false site: fp 4
    chip = Chip("chip_x", np.zeros((12, 12, 3), np.float32), mask)
    pixels, sites, off_label = score([chip], [probability], 0.5, {"chip_x": np.full(12, 100.0)})
    assert (pixels.tp, pixels.fp, pixels.fn) == (4, 16, 12)
    assert (off_label.tp, off_label.fp, off_label.fn) == (4, 12, 12)
    assert scores(off_label)["iou"] == pytest.approx(4 / 28)
    assert sites.false == 1
    # The minimum site size comes first: a false site it erases is not left out again.
    dropped, _, small_dropped = score([chip], [probability], 0.5, {"chip_x": np.full(12, 100.0)},
                                min_ha=0.05)  # the 4-pixel false site is 0.04 ha
    assert (dropped.tp, dropped.fp) == (small_dropped.tp, small_dropped.fp) == (4, 12)


def test_results_go_under_results_by_name_or_to_a_json_path(tmp_path, capsys):
    # A 100-minute cross-validation once lost its result to "--out benchmarks/results/x.json"
    # read as a name (results/benchmarks/results/x.json.json, whose folder did not exist).
    from benchmarks.common import RESULTS, result_path, write_result

    assert result_path("quality_cv") == RESULTS / "quality_cv.json"
    target = tmp_path / "new" / "folder" / "cv.json"
    assert result_path(str(target)) == target
    written = write_result(str(target), {"pooled_iou": 0.3})
    assert written == target and '"pooled_iou": 0.3' in target.read_text()
    assert '"pooled_iou": 0.3' in capsys.readouterr().out  # printed too


def test_results_name_the_cpu_and_the_tensorflow_settings(tmp_path):
    from benchmarks.common import write_result

    payload = json.loads(write_result(str(tmp_path / "r.json"), {}).read_text())
    machine = payload["machine"]
    assert machine["cpu"]["model"] and machine["cpu"]["cores"] >= 1
    assert isinstance(machine["cpu"]["flags"], list)
    assert set(machine["tensorflow_env"]) == {"TF_CPU_ALLOCATOR_USE_BFC", "TF_ENABLE_ONEDNN_OPTS"}


@pytest.mark.parametrize("module", ["bench_training", "bench_predict"])
def test_throughput_benchmarks_run_tensorflow_with_tailsegs_allocator(module):
    # Issue 13: the benchmarks measure what `tailseg` runs, so they set the allocator before
    # TensorFlow loads (bench_predict's children inherit it), as the CLI does.
    root = Path(__file__).resolve().parent.parent
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    code = (f"import os, sys, benchmarks.{module}\n"
            "print(os.environ.get('TF_CPU_ALLOCATOR_USE_BFC'))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=environ,
                          capture_output=True, text=True, check=True)
    assert done.stdout.split()[-1] == "true"


def test_every_variant_is_a_valid_run_configuration_with_its_overrides_applied():
    # A typo in a variant (an unknown key, a model override landing under training) would only
    # show after the variants before it had trained for an hour.
    from benchmarks.compare_quality import VARIANTS, variant_config, variant_overrides

    config_path = str(Path(__file__).resolve().parent.parent / "zenml.yaml")
    default = variant_config(config_path, {})
    for name in VARIANTS:
        training, model = variant_overrides(name)
        config = variant_config(config_path, training, model)
        for key, value in training.items():
            assert getattr(config.training, key) == value, (name, key)
        for key, value in model.items():
            assert getattr(config.model, key) == value, (name, key)
        untouched = set(type(config.model).model_fields) - set(model)
        assert {key: getattr(config.model, key) for key in untouched} == \
            {key: getattr(default.model, key) for key in untouched}, name
    depth = variant_config(config_path, {}, VARIANTS["depth_5_filters_8"]["model"])
    assert (depth.model.depth, depth.model.base_filters) == (5, 8)
    assert depth.training == default.training


def test_site_filter_parameters_are_picked_on_the_chips_and_ties_keep_the_plain_threshold():
    from benchmarks.compare_quality import pick_site_filter

    mask = np.zeros((12, 12), np.uint8)
    mask[2:6, 2:6] = 1
    probability = np.zeros((12, 12), np.float32)
    probability[2:6, 2:6] = 0.6
    probability[3, 3] = 0.97           # the labelled site has a confident core
    probability[8:11, 8:11] = 0.65     # a false site without one, higher on average
    chip = Chip("chip_x", np.zeros((12, 12, 3), np.float32), mask)
    areas = {"chip_x": np.full(12, 100.0)}
    # Only a core above 0.65 separates them: the first such pair keeps the site whole.
    assert pick_site_filter("hysteresis", [chip], [probability], areas, 0.0) == (0.05, 0.7)
    # Means: site 0.623, false site 0.65; no mean threshold keeps the site and drops the false
    # one, so the plain threshold (second == threshold) that keeps both ties the best and wins.
    assert pick_site_filter("confident", [chip], [probability], areas, 0.0) == (0.05, 0.05)
    # The minimum site size acts first: erasing the 9-pixel false site (0.09 ha) leaves
    # nothing for a filter to do.
    assert pick_site_filter("hysteresis", [chip], [probability], areas, 0.1) == (0.05, 0.05)
