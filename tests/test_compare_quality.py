"""The minimum-site rule of benchmarks/compare_quality.py: sites below the area are erased from
the pixels, by ellipsoidal row areas, 8-connected like the site metrics."""

import numpy as np

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
