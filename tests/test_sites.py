"""Site-level metrics on hand-built masks whose answers are known, and pixel areas checked
against the ellipsoid's radii of curvature and the UTM scale factor."""

import math

import numpy as np
import pytest
from rasterio.transform import from_origin

from tailseg.dataset import Chip
from tailseg.sites import (
    SiteCounts,
    confident_sites,
    drop_small_sites,
    evaluate_sites,
    false_site_pixels,
    hysteresis_sites,
    raster_row_areas,
    row_pixel_areas,
    site_counts,
    site_scores,
)
from tests.rasters import ORIGIN, PIXEL_DEG, write_mask

A, E2 = 6378137.0, 0.00669437999014  # WGS84 semi-major axis and first eccentricity squared


def _cell_area_by_radii(lat_deg: float, size_deg: float) -> float:
    """A small lon/lat cell: east-west size from the parallel's radius, north-south size from
    the meridian's radius of curvature."""
    phi = math.radians(lat_deg)
    w = 1 - E2 * math.sin(phi) ** 2
    east = A * math.cos(phi) / math.sqrt(w) * math.radians(size_deg)
    north = A * (1 - E2) / w**1.5 * math.radians(size_deg)
    return east * north


def test_lonlat_pixel_areas_follow_latitude():
    rows = row_pixel_areas(from_origin(ORIGIN[0], ORIGIN[1], PIXEL_DEG, PIXEL_DEG), "EPSG:4326",
                           448)
    centre = ORIGIN[1] - PIXEL_DEG * 0.5
    assert rows[0] == pytest.approx(_cell_area_by_radii(centre, PIXEL_DEG), rel=1e-5)
    assert 92 < rows[0] < 93  # 9.9 m north-south by 9.3 m east-west near Brumadinho
    # Southern hemisphere, going south: cells shrink with the cosine of latitude.
    assert np.all(np.diff(rows) < 0)
    at_60 = row_pixel_areas(from_origin(0, 60.0 + PIXEL_DEG / 2, PIXEL_DEG, PIXEL_DEG),
                            "EPSG:4326", 1)[0]
    assert at_60 == pytest.approx(_cell_area_by_radii(60.0, PIXEL_DEG), rel=1e-5)


def test_utm_pixels_on_the_central_meridian_are_shrunk_by_the_scale_factor():
    # UTM 23S: grid distances on the central meridian are 0.9996 of true distances.
    rows = row_pixel_areas(from_origin(500_000, 7_775_000, 10, 10), "EPSG:32723", 4)
    assert rows == pytest.approx(np.full(4, 100 / 0.9996**2), rel=1e-4)


def test_row_areas_from_a_geotiff_header(tmp_path):
    path = write_mask(tmp_path / "m.tif", np.zeros((5, 7), np.uint8))
    assert raster_row_areas(path) == pytest.approx(
        row_pixel_areas(from_origin(ORIGIN[0], ORIGIN[1], PIXEL_DEG, PIXEL_DEG), "EPSG:4326", 5))


def test_rotated_or_unreferenced_grids_are_refused():
    from affine import Affine

    with pytest.raises(ValueError, match="rotated"):
        row_pixel_areas(Affine(10, 1, 0, 0, -10, 0), "EPSG:32723", 3)
    with pytest.raises(ValueError, match="CRS"):
        row_pixel_areas(from_origin(0, 0, 1, 1), None, 3)


ROWS = np.full(20, 100.0)  # 20 x 20 chip of 100 m2 pixels: 0.04 km2


def _scene():
    truth = np.zeros((20, 20), bool)
    truth[2:6, 2:6] = True      # site A, 16 px: predicted but one pixel -> found, area -1/16
    truth[10:14, 10:14] = True  # site B, 16 px: one predicted pixel, IoU 1/16 -> not found
    truth[18, 18] = True        # site C: missed
    predicted = np.zeros_like(truth)
    predicted[2:6, 2:6] = True
    predicted[5, 5] = False
    predicted[11, 11] = True
    predicted[15:17, 0:2] = True  # false site, 4 px
    predicted[0, 19] = True       # false site, 1 px
    return truth, predicted


def test_found_false_and_area_error_on_a_hand_built_chip():
    counts = site_counts(*_scene(), ROWS)
    assert (counts.labelled, counts.found, counts.predicted, counts.false) == (3, 1, 4, 2)
    assert counts.area_errors == pytest.approx((-1 / 16,))
    scores = site_scores(counts)
    assert scores["site_recall"] == pytest.approx(1 / 3)
    assert scores["area_km2"] == pytest.approx(0.04)
    assert scores["false_sites_per_100km2"] == pytest.approx(2 / 0.04 * 100)
    assert scores["area_error_median"] == pytest.approx(-1 / 16)
    assert scores["area_abs_error_mean"] == pytest.approx(1 / 16)


def test_a_site_predicted_in_fragments_is_found_by_its_fragments_together():
    truth = np.zeros((20, 20), bool)
    truth[5:15, 5:15] = True   # 100 px
    one = np.zeros_like(truth)
    one[5, 5:11] = True        # 6 px: IoU 0.06 alone
    two = one.copy()
    two[14, 5:11] = True       # another 6 px, not touching: together IoU 0.12
    assert site_counts(truth, one, ROWS).found == 0
    counts = site_counts(truth, two, ROWS)
    assert counts.found == 1 and counts.false == 0
    assert counts.area_errors == pytest.approx((12 / 100 - 1,))


def test_one_blob_over_everything_finds_nothing():
    truth = np.zeros((40, 40), bool)
    truth[0:4, 0:4] = True
    counts = site_counts(truth, np.ones_like(truth), np.full(40, 100.0))
    assert (counts.found, counts.false, counts.predicted) == (0, 0, 1)  # IoU 16/1600


def test_minimum_site_size_drops_small_predicted_sites():
    truth, predicted = _scene()
    counts = site_counts(truth, predicted, ROWS, min_site_pixels=2)
    # The 1-px false site and the 1-px fragment in B go; A's 15 px and the 4-px false site stay.
    assert (counts.predicted, counts.false, counts.found) == (2, 1, 1)


def test_connectivity_decides_whether_diagonal_pixels_are_one_site():
    truth = np.zeros((4, 4), bool)
    truth[0, 0] = truth[1, 1] = True
    assert site_counts(truth, truth, np.ones(4), connectivity=4).labelled == 2
    assert site_counts(truth, truth, np.ones(4), connectivity=8).labelled == 1


def test_nothing_labelled_and_nothing_predicted():
    empty = np.zeros((4, 4), bool)
    scores = site_scores(site_counts(empty, empty, np.ones(4)))
    assert scores["site_recall"] is None and scores["false_sites"] == 0
    assert scores["area_error_median"] is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes"):
        site_counts(np.zeros((4, 4)), np.zeros((4, 4)), np.ones(3))


def test_evaluate_sites_pools_chips_at_the_threshold():
    truth, predicted = _scene()
    chips = [Chip("a", np.zeros((20, 20, 3), np.float32), truth.astype(np.uint8)),
             Chip("b", np.zeros((20, 20, 3), np.float32), truth.astype(np.uint8))]
    probabilities = [predicted * 0.9, np.where(truth, 0.6, 0.1)]
    report = evaluate_sites(chips, probabilities, 0.5, [ROWS, ROWS], min_site_ha=0)
    assert (report["sites_labelled"], report["sites_found"], report["false_sites"]) == (6, 4, 2)
    assert report["false_sites_per_100km2"] == pytest.approx(2 / 0.08 * 100)
    assert [c["sites_found"] for c in report["per_chip"]] == [1, 3]
    assert "IoU >= 0.1" in report["rule"]
    # At a threshold above 0.6 chip b predicts nothing.
    assert evaluate_sites(chips, probabilities, 0.7, [ROWS, ROWS],
                          min_site_ha=0)["sites_found"] == 1


def test_model_card_has_the_site_section():
    from tailseg.model_card import render_model_card

    truth, predicted = _scene()
    chips = [Chip("a", np.zeros((20, 20, 3), np.float32), truth.astype(np.uint8))]
    sites = evaluate_sites(chips, [predicted * 0.9], 0.5, [ROWS], min_site_ha=0)
    metrics = {"iou": 0.4, "f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.9,
               "sites": sites}
    card = render_model_card("tailseg", 1, {}, {"test": ["a"]}, metrics, 0.5, {},
                             {"blessed": True, "reasons": []})
    assert "## Site-level test metrics" in card and "IoU >= 0.1" in card
    assert "| labelled sites found | 1 of 3 (33%) |" in card
    assert "| false sites | 2 (5000.0 per 100 km2 of 0.0 km2) |" in card
    assert "| area error of found sites, median | -6% |" in card


def test_console_line_shows_missing_values_as_na():
    from tailseg.sites import site_line

    empty = np.zeros((4, 4), bool)
    line = site_line(site_scores(site_counts(empty, empty, np.ones(4))))
    assert line.startswith("sites found 0/0 (n/a), false sites 0 (0.0 per 100 km2)")
    truth, predicted = _scene()
    assert "median -6%" in site_line(site_scores(site_counts(truth, predicted, ROWS)))


def test_sites_under_the_minimum_area_are_not_counted_and_labelled_ones_always_are():
    truth = np.zeros((30, 30), bool)
    truth[2:4, 2:4] = True                       # a labelled site of 4 px: 0.04 ha at 100 m2
    predicted = truth.copy()
    predicted[10:16, 10:17] = True               # a false site of 42 px: 0.42 ha
    predicted[20:28, 20:28] = True               # a false site of 64 px: 0.64 ha
    rows = np.full(30, 100.0)
    kept_all = site_counts(truth, predicted, rows)
    assert (kept_all.labelled, kept_all.found, kept_all.false) == (1, 1, 2)
    half_hectare = site_counts(truth, predicted, rows, min_site_ha=0.5)
    # The small labelled site stays labelled; its small prediction is dropped like any other.
    assert (half_hectare.labelled, half_hectare.found, half_hectare.false) == (1, 0, 1)
    # Areas come from the rows: at 125 m2 per pixel the 42 px site is 0.525 ha and stays.
    assert site_counts(truth, predicted, np.full(30, 125.0), min_site_ha=0.5).false == 2


def test_evaluation_drops_sites_under_half_a_hectare_by_default():
    from tailseg.constants import MIN_SITE_AREA_HA

    truth = np.zeros((30, 30), np.uint8)
    truth[20:28, 20:28] = 1                      # found, 0.64 ha
    probability = truth * 0.9
    probability[2:8, 2:9] = 0.9                  # a false site of 0.42 ha
    chips = [Chip("a", np.zeros((30, 30, 3), np.float32), truth)]
    report = evaluate_sites(chips, [probability], 0.5, [np.full(30, 100.0)])
    assert MIN_SITE_AREA_HA == 0.5 and report["min_site_ha"] == MIN_SITE_AREA_HA
    assert (report["sites_found"], report["false_sites"]) == (1, 0)
    from tailseg.model_card import render_model_card

    metrics = {"iou": 0.4, "f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.9,
               "sites": report}
    card = render_model_card("tailseg", 1, {}, {"test": ["a"]}, metrics, 0.5, {},
                             {"blessed": True, "reasons": []})
    assert "Predicted sites under 0.5 ha are not counted" in card
    everything = evaluate_sites(chips, [probability], 0.5, [np.full(30, 100.0)], min_site_ha=0)
    assert everything["false_sites"] == 1


def test_found_needs_iou_of_at_least_a_tenth():
    truth = np.zeros((20, 20), bool)
    truth[5:15, 5:15] = True         # 100 px
    exactly = np.zeros_like(truth)
    exactly[5, 5:15] = True          # 10 px inside: IoU 10 / 100 = 0.1 -> found
    below = exactly.copy()
    below[5, 4] = True               # one more px outside, same site: IoU 10 / 101 -> not found
    assert site_counts(truth, exactly, ROWS).found == 1
    assert site_counts(truth, below, ROWS).found == 0


def test_a_site_of_exactly_half_a_hectare_is_kept_and_one_just_under_is_dropped():
    truth = np.zeros((20, 20), bool)
    predicted = np.zeros_like(truth)
    predicted[0:5, 0:10] = True      # a false site of 50 px
    # 100 m2 pixels: exactly 0.5 ha, kept; 99.9 m2 pixels: 0.4995 ha, dropped.
    assert site_counts(truth, predicted, ROWS, min_site_ha=0.5).false == 1
    assert site_counts(truth, predicted, np.full(20, 99.9), min_site_ha=0.5).false == 0


def _two_sites() -> np.ndarray:
    """Two sites at 0.5 and above, apart: a faint one (0.5-0.6) and one with a confident core."""
    probability = np.zeros((6, 12), np.float32)
    probability[1:4, 1:4] = [[0.5, 0.6, 0.5], [0.6, 0.6, 0.6], [0.5, 0.6, 0.5]]
    probability[1:5, 7:11] = 0.55
    probability[2, 8] = 0.95
    return probability


def test_hysteresis_keeps_whole_sites_with_a_confident_core_and_drops_the_rest():
    probability = _two_sites()
    kept = hysteresis_sites(probability, 0.5, 0.9)
    assert not kept[1:4, 1:4].any()                 # no pixel reaches 0.9: dropped whole
    assert kept[1:5, 7:11].all()                    # the core keeps its 0.55 pixels too
    assert kept.sum() == 16
    # high at or under low is the plain threshold; a core just under high drops its site
    assert (hysteresis_sites(probability, 0.5, 0.5) == (probability >= 0.5)).all()
    assert not hysteresis_sites(probability, 0.5, 0.96).any()
    probability[2, 8] = 0.75  # exact in float32: a core at exactly high keeps its site
    assert hysteresis_sites(probability, 0.5, 0.75).sum() == 16
    # diagonal pixels join a site only with 8-connectivity
    diagonal = np.zeros((3, 3), np.float32)
    diagonal[0, 0], diagonal[1, 1] = 0.6, 0.95
    assert hysteresis_sites(diagonal, 0.5, 0.9)[0, 0]
    assert not hysteresis_sites(diagonal, 0.5, 0.9, connectivity=4)[0, 0]


def test_confident_sites_filter_on_the_mean_probability_of_each_site():
    probability = _two_sites()
    means = (probability[1:4, 1:4].mean(), probability[1:5, 7:11].mean())  # 0.556, 0.575
    kept = confident_sites(probability, 0.5, 0.57)
    assert means[0] < 0.57 <= means[1]
    assert not kept[1:4, 1:4].any() and kept[1:5, 7:11].all()
    assert (confident_sites(probability, 0.5, 0.5) == (probability >= 0.5)).all()
    # the mean is over the site's pixels at or above the threshold, not its surroundings
    assert confident_sites(probability, 0.55, 0.59)[1:4, 1:4].sum() == 5


def _diagonal_pair() -> np.ndarray:
    pair = np.zeros((4, 4), bool)
    pair[0, 0] = pair[1, 1] = True
    return pair


def test_connectivity_also_decides_what_one_predicted_site_is():
    nothing, pair = np.zeros((4, 4), bool), _diagonal_pair()
    assert site_counts(nothing, pair, np.ones(4)).predicted == 1  # 8-connected by default
    assert site_counts(nothing, pair, np.ones(4), connectivity=4).predicted == 2
    # the minimum site size measures the joined site: two 1-px sites or one 2-px site
    assert drop_small_sites(pair, np.ones(4), min_site_pixels=2).sum() == 2
    assert not drop_small_sites(pair, np.ones(4), min_site_pixels=2, connectivity=4).any()
    assert site_counts(nothing, pair, np.ones(4), connectivity=4, min_site_pixels=2).predicted == 0
    assert false_site_pixels(nothing, pair).sum() == 2
    touching = _diagonal_pair()
    touching[0, 0] = False
    assert not false_site_pixels(touching, pair).any()  # the site touches the label diagonally
    assert false_site_pixels(touching, pair, connectivity=4)[0, 0]


def test_a_site_of_exactly_the_minimum_pixels_is_kept():
    truth, predicted = _scene()
    # The false site of 4 px stays at a 4 px minimum and goes at 5.
    assert site_counts(truth, predicted, ROWS, min_site_pixels=4).false == 1
    assert site_counts(truth, predicted, ROWS, min_site_pixels=5).false == 0
    assert drop_small_sites(predicted.astype(np.uint8), ROWS).dtype == bool


def test_a_missed_site_does_not_end_the_search_for_found_ones():
    truth = np.zeros((10, 10), bool)
    truth[0:2, 0:2] = True   # labelled first, predicted nowhere
    truth[6:9, 6:9] = True   # labelled second, predicted exactly
    predicted = np.zeros_like(truth)
    predicted[6:9, 6:9] = True
    counts = site_counts(truth, predicted, np.ones(10))
    assert (counts.found, counts.labelled) == (1, 2)


def test_predictions_of_another_shape_are_an_error():
    with pytest.raises(ValueError, match="shapes"):
        site_counts(np.zeros((4, 4)), np.zeros((4, 5)), np.ones(4))


def test_pooled_counts_add_every_tally():
    one = SiteCounts(3, 1, 4, 2, 0.04, (-0.5,))
    two = SiteCounts(1, 1, 2, 1, 0.02, (0.25,))
    assert one + two == SiteCounts(4, 2, 6, 3, pytest.approx(0.06), (-0.5, 0.25))


def test_scores_without_area_or_found_sites_are_missing_not_zero():
    scores = site_scores(SiteCounts())
    assert scores["false_sites_per_100km2"] is None and scores["site_recall"] is None
    assert scores["area_error_median"] is None and scores["area_abs_error_mean"] is None


def test_evaluate_sites_uses_the_pixel_rule_and_reports_its_settings():
    truth, predicted = _scene()
    chip = Chip("a", np.zeros((20, 20, 3), np.float32), truth.astype(np.uint8))
    # A pixel at exactly the threshold is tailings, as in the pixel metrics (>=).
    report = evaluate_sites([chip], [predicted * 0.5], 0.5, [ROWS], min_site_ha=0)
    assert (report["sites_found"], report["false_sites"]) == (1, 2)
    assert report["per_chip"] == [{"chip_id": "a", "sites_labelled": 3, "sites_found": 1,
                                   "false_sites": 2}]
    assert (report["connectivity"], report["min_site_pixels"], report["min_site_ha"]) == (8, 0,
                                                                                            0)
    # The minimum site size in pixels and the connectivity reach every chip's counts.
    small = evaluate_sites([chip], [predicted * 0.9], 0.5, [ROWS], min_site_pixels=2,
                           min_site_ha=0)
    assert (small["false_sites"], small["min_site_pixels"]) == (1, 2)
    pair = Chip("p", np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8))
    by_edges = evaluate_sites([pair], [_diagonal_pair() * 0.9], 0.5, [np.ones(4)],
                              connectivity=4, min_site_ha=0)
    assert (by_edges["sites_predicted"], by_edges["connectivity"]) == (2, 4)
    with pytest.raises(ValueError):
        evaluate_sites([chip, chip], [predicted * 0.9], 0.5, [ROWS, ROWS])


def test_console_line_shows_every_score():
    from tailseg.sites import site_line

    line = site_line(site_scores(SiteCounts(3, 1, 4, 2, 0.04, (-0.5,))))
    assert line == ("sites found 1/3 (33%), false sites 2 (5000.0 per 100 km2), area error of "
                    "found sites median -50%, mean abs 50%")


def test_confident_sites_keep_a_site_at_exactly_the_minimum_mean_and_single_pixels():
    probability = np.zeros((5, 5))
    probability[0, 0:2] = [0.5, 0.75]   # mean 0.625, exact in binary
    probability[3, 3] = 0.8             # a site of one pixel
    kept = confident_sites(probability, 0.5, 0.625)
    assert kept[0, 0:2].all() and kept[3, 3]
    assert not confident_sites(probability, 0.5, 0.7)[0, 0:2].any()
    diagonal = np.zeros((3, 3))
    diagonal[0, 0], diagonal[1, 1] = 0.5, 0.9  # mean 0.7 joined; 0.5 alone
    assert confident_sites(diagonal, 0.5, 0.7)[0, 0]
    assert not confident_sites(diagonal, 0.5, 0.7, connectivity=4)[0, 0]
