"""Site-level metrics beside pixel IoU: how many labelled tailings sites a model finds, how many
sites it invents, and how well it measures the ones it finds.

A *site* is a connected component of tailings pixels, 8-connected by default: the bundled
labels mark one site per chip, and 8-connectivity reads one site in 98 of the 100 masks,
4-connectivity in only 92 (parts touching at corners count apart). The rules:

* **Found**: a labelled site is found when the predicted sites that touch it, taken together,
  overlap it with IoU >= 0.1 (`min_iou`). Taking the touching sites together lets a site
  predicted in fragments count; the IoU bound stops one huge blob from "finding" every site
  under it.
* **False site**: a predicted site that touches no labelled tailings pixel. The rate is per
  100 km2 of evaluated chip area. Labels are partial (one site per chip), so some false sites
  are real unlabelled tailings: read this as an upper bound.
* **Area error** of a found site: (area of the predicted sites touching it - its area) / its
  area. Reported as the median (signed: below 0 means under-mapping) and the mean absolute
  value over found sites.
* `min_site_ha` (default in evaluation: 0.5 ha, tailseg.constants.MIN_SITE_AREA_HA, the size
  under which `tailseg predict` drops a site from its polygons) and `min_site_pixels` drop
  predicted sites smaller than that before anything is counted (the "minimum site size"
  post-processing), so the scores describe the sites users receive; labelled sites are always
  kept. In 5-fold cross-validation (docs/evaluation.md) the 0.5 ha minimum cut false sites
  from 106 to 12 per 100 km2 and left site recall (0.54) and pixel IoU unchanged.

Areas are ellipsoidal (WGS84): each pixel row of a lon/lat chip gets the geodesic area of its
cells, which shrinks with the cosine of the latitude; a projected chip gets the geodesic area
of its centre pixel for all pixels (a chip is too small for the scale to vary).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer
from scipy import ndimage

from tailseg.constants import MIN_SITE_AREA_HA
from tailseg.dataset import Chip
from tailseg.raster import open_raster
from tailseg.vectorize import SQUARE_METRES_PER_HECTARE, geodesic_area_ha

SQUARE_METRES_PER_KM2 = 1e6
MIN_IOU = 0.1
FOUND_RULE = (f"a labelled site is found when the predicted sites touching it together overlap "
              f"it with IoU >= {MIN_IOU}")
_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1),
              8: ndimage.generate_binary_structure(2, 2)}


def _cell_area_m2(corners_lonlat: list[tuple[float, float]]) -> float:
    return geodesic_area_ha(shapely.Polygon(corners_lonlat)) * SQUARE_METRES_PER_HECTARE


def row_pixel_areas(transform, crs, height: int) -> np.ndarray:
    """Area in m2 of one pixel in each of the height rows of a north-up grid.

    Raises:
        ValueError: the grid is rotated or has no CRS.
    """
    if transform.b != 0 or transform.d != 0:
        raise ValueError(f"rotated geotransform {tuple(transform)[:6]} is not supported")
    if crs is None:
        raise ValueError("a chip without a CRS has no area; georeference it first")
    crs = CRS.from_user_input(crs)
    width_x, height_y = transform.a, transform.e
    if crs.is_geographic:
        tops = transform.f + height_y * np.arange(height)
        return np.array([_cell_area_m2([(0.0, top), (width_x, top), (width_x, top + height_y),
                                        (0.0, top + height_y)]) for top in tops])
    x0, y0 = transform.c, transform.f + height_y * (height // 2)
    to_lonlat = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    corners = [to_lonlat.transform(x, y) for x, y in
               ((x0, y0), (x0 + width_x, y0), (x0 + width_x, y0 + height_y), (x0, y0 + height_y))]
    return np.full(height, _cell_area_m2(corners))


def raster_row_areas(path: str | Path) -> np.ndarray:
    """row_pixel_areas of a GeoTIFF (e.g. a chip's mask), from its header only."""
    with open_raster(path) as dataset:
        return row_pixel_areas(dataset.transform, dataset.crs, dataset.height)


@dataclass(frozen=True)
class SiteCounts:
    """Site tallies of one or more chips; add them to pool chips."""

    labelled: int = 0
    found: int = 0
    predicted: int = 0
    false: int = 0
    area_km2: float = 0.0
    area_errors: tuple[float, ...] = ()  # relative, one per found site

    def __add__(self, other: SiteCounts) -> SiteCounts:
        return SiteCounts(self.labelled + other.labelled, self.found + other.found,
                          self.predicted + other.predicted, self.false + other.false,
                          self.area_km2 + other.area_km2, self.area_errors + other.area_errors)


def drop_small_sites(predicted: np.ndarray, row_areas_m2: np.ndarray, min_site_ha: float = 0.0,
                     min_site_pixels: int = 0, connectivity: int = 8) -> np.ndarray:
    """predicted (boolean-like, (H, W)) without its sites under min_site_pixels pixels or under
    min_site_ha hectares (row_areas_m2: (H,) area of one pixel per row): the minimum site size
    that `tailseg predict` applies to its polygons, here on pixels."""
    predicted = np.asarray(predicted).astype(bool)
    if not (min_site_pixels > 1 or min_site_ha > 0):
        return predicted
    labels, count = ndimage.label(predicted, _STRUCTURE[connectivity])
    if not count:
        return predicted
    areas = np.broadcast_to(row_areas_m2[:, None], predicted.shape)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    hectares = np.bincount(labels.ravel(), areas.ravel(), minlength=count + 1) \
        / SQUARE_METRES_PER_HECTARE
    keep = (sizes >= min_site_pixels) & (hectares >= min_site_ha)
    keep[0] = False
    return keep[labels]


def hysteresis_sites(probability: np.ndarray, low: float, high: float, connectivity: int = 8
                     ) -> np.ndarray:
    """The sites of probability >= low that hold at least one pixel >= high (hysteresis
    thresholding): a confident core keeps its whole site, a site without one is dropped.
    high <= low is the plain threshold at low."""
    probability = np.asarray(probability)
    candidate = probability >= low
    if high <= low:
        return candidate
    labels, count = ndimage.label(candidate, _STRUCTURE[connectivity])
    keep = np.zeros(count + 1, bool)
    keep[np.unique(labels[candidate & (probability >= high)])] = True
    keep[0] = False
    return keep[labels]


def confident_sites(probability: np.ndarray, threshold: float, min_mean: float,
                    connectivity: int = 8) -> np.ndarray:
    """The sites of probability >= threshold whose mean probability is at least min_mean: the
    `mean_probability` of `tailseg predict`'s polygons, used as a filter."""
    probability = np.asarray(probability)
    candidate = probability >= threshold
    if min_mean <= threshold:  # every site's mean is at least the threshold
        return candidate
    labels, count = ndimage.label(candidate, _STRUCTURE[connectivity])
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sums = np.bincount(labels.ravel(), probability.ravel(), minlength=count + 1)
    keep = sums >= min_mean * np.maximum(sizes, 1)
    keep[0] = False
    return keep[labels]


def false_site_pixels(truth: np.ndarray, predicted: np.ndarray, connectivity: int = 8
                      ) -> np.ndarray:
    """The pixels of the predicted sites that touch no labelled tailings pixel (false sites).

    Labels are partial, so some of these are real, unlabelled tailings: scoring with them left
    out (metrics.confusion(..., valid=~false_site_pixels(...))) bounds what the partial labels
    cost a model's pixel scores."""
    truth, predicted = np.asarray(truth).astype(bool), np.asarray(predicted).astype(bool)
    labels, count = ndimage.label(predicted, _STRUCTURE[connectivity])
    touching = np.zeros(count + 1, bool)
    touching[np.unique(labels[truth])] = True
    touching[0] = True
    return ~touching[labels]


def site_counts(truth: np.ndarray, predicted: np.ndarray, row_areas_m2: np.ndarray,
                connectivity: int = 8, min_iou: float = MIN_IOU,
                min_site_pixels: int = 0, min_site_ha: float = 0.0) -> SiteCounts:
    """Found, false and area-error tallies of one chip (see the module docstring for rules).

    Args:
        truth, predicted: boolean-like (H, W) masks of tailings.
        row_areas_m2: (H,) area of one pixel per row (row_pixel_areas).
    """
    truth, predicted = np.asarray(truth).astype(bool), np.asarray(predicted).astype(bool)
    if truth.shape != predicted.shape or row_areas_m2.shape != truth.shape[:1]:
        raise ValueError(f"shapes differ: truth {truth.shape}, prediction {predicted.shape}, "
                         f"row areas {row_areas_m2.shape}")
    areas = np.broadcast_to(row_areas_m2[:, None], truth.shape)
    true_labels, n_true = ndimage.label(truth, _STRUCTURE[connectivity])
    predicted = drop_small_sites(predicted, row_areas_m2, min_site_ha, min_site_pixels,
                                 connectivity)
    pred_labels, n_pred = ndimage.label(predicted, _STRUCTURE[connectivity])
    pred_area = ndimage.sum_labels(areas, pred_labels, np.arange(1, n_pred + 1))
    found, errors = 0, []
    for site in range(1, n_true + 1):
        inside = true_labels == site
        touching = np.unique(pred_labels[inside])
        touching = touching[touching > 0]
        if not touching.size:
            continue
        matched = np.isin(pred_labels, touching)
        iou = np.count_nonzero(inside & matched) / np.count_nonzero(inside | matched)
        if iou >= min_iou:
            found += 1
            true_area = float(areas[inside].sum())
            errors.append((float(pred_area[touching - 1].sum()) - true_area) / true_area)
    hits = np.unique(pred_labels[truth])
    false = n_pred - np.count_nonzero(hits > 0)
    return SiteCounts(n_true, found, n_pred, int(false),
                      float(areas.sum()) / SQUARE_METRES_PER_KM2, tuple(errors))


def site_scores(counts: SiteCounts) -> dict[str, float | int | None]:
    """Share of sites found, false sites per 100 km2, area errors of found sites.

    site_recall is None without labelled sites; area errors are None without found sites.
    """
    errors = np.asarray(counts.area_errors)
    return {
        "sites_labelled": counts.labelled,
        "sites_found": counts.found,
        "site_recall": counts.found / counts.labelled if counts.labelled else None,
        "sites_predicted": counts.predicted,
        "false_sites": counts.false,
        "false_sites_per_100km2": (100 * counts.false / counts.area_km2 if counts.area_km2
                                   else None),
        "area_km2": counts.area_km2,
        "area_error_median": float(np.median(errors)) if errors.size else None,
        "area_abs_error_mean": float(np.mean(np.abs(errors))) if errors.size else None,
    }


def evaluate_sites(chips: list[Chip], probabilities: list[np.ndarray], threshold: float,
                   row_areas: list[np.ndarray], connectivity: int = 8,
                   min_site_pixels: int = 0, min_site_ha: float = MIN_SITE_AREA_HA) -> dict:
    """Pooled site scores of chips at a threshold, with per-chip tallies.

    Returns:
        site_scores(...) plus "rule" (the found rule in words) and "per_chip".
    """
    pooled, per_chip = SiteCounts(), []
    for chip, probability, rows in zip(chips, probabilities, row_areas, strict=True):
        counts = site_counts(chip.mask == 1, probability >= threshold, rows, connectivity,
                             min_site_pixels=min_site_pixels, min_site_ha=min_site_ha)
        pooled = pooled + counts
        per_chip.append({"chip_id": chip.chip_id, "sites_labelled": counts.labelled,
                         "sites_found": counts.found, "false_sites": counts.false})
    return {**site_scores(pooled), "rule": FOUND_RULE, "connectivity": connectivity,
            "min_site_pixels": min_site_pixels, "min_site_ha": min_site_ha,
            "per_chip": per_chip}


def site_line(sites: dict) -> str:
    """One console line of site scores."""
    def show(value, form):
        return "n/a" if value is None else format(value, form)

    return (f"sites found {sites['sites_found']}/{sites['sites_labelled']} "
            f"({show(sites['site_recall'], '.0%')}), false sites {sites['false_sites']} "
            f"({show(sites['false_sites_per_100km2'], '.1f')} per 100 km2), area error of "
            f"found sites median {show(sites['area_error_median'], '+.0%')}, mean abs "
            f"{show(sites['area_abs_error_mean'], '.0%')}")
