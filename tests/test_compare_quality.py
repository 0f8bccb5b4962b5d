"""The minimum-site rule of benchmarks/compare_quality.py: sites below the area are erased from
the pixels, by ellipsoidal row areas, 8-connected like the site metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.compare_quality import drop_small_sites


def test_sites_below_the_minimum_area_are_erased_and_the_rest_kept_whole():
    predicted = np.zeros((40, 40), bool)
    predicted[2:5, 2:5] = True        # 9 pixels of 100 m2: 0.09 ha
    predicted[10:30, 10:30] = True    # 400 pixels: 4 ha
    kept = drop_small_sites(predicted, np.full(40, 100.0), min_ha=0.5)
    assert not kept[2:5, 2:5].any()
    assert kept[10:30, 10:30].all() and kept.sum() == 400


def test_area_follows_the_row_areas_and_diagonal_pixels_join_one_site():
    predicted = np.zeros((10, 10), bool)
    for i in range(6):                # a diagonal line: one 8-connected site of 6 pixels
        predicted[i, i] = True
    small_rows, large_rows = np.full(10, 800.0), np.full(10, 900.0)
    assert not drop_small_sites(predicted, small_rows, min_ha=0.5).any()   # 0.48 ha
    assert drop_small_sites(predicted, large_rows, min_ha=0.5).sum() == 6  # 0.54 ha


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
