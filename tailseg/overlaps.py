"""Chips that cover the same ground: groups for the split, and their labels merged.

The bundled chips were exported one per area of interest, and neighbouring areas overlap: 81
pairs of the 100 chips share ground, up to 85 % of a chip, with the same 2021 composite
underneath. Each chip labels one site, so where two chips overlap, the site one of them labels
is background in the other: the same pixels carry both labels. Two consequences, both handled
here:

- Split leakage. Hashing each chip on its own put 11 of the 14 test chips on ground a training
  chip covers. overlap_groups() joins chips whose footprints share ground (connected
  components); the split and the cross-validation folds assign whole groups.
- Contradicting labels. merge_labels() gives each chip the union of its own mask and the masks
  of the chips overlapping it, resampled onto its grid (nearest neighbour): a site labelled in
  any chip is tailings in every chip that shows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)
NOT_COVERED = 255


@dataclass(frozen=True)
class Footprint:
    """A chip's grid: CRS, affine transform and size, read from its mask's header."""

    chip_id: str
    crs: object  # rasterio CRS
    transform: object  # affine.Affine
    width: int
    height: int

    def bounds_in(self, crs) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the chip in crs."""
        from rasterio.transform import array_bounds
        from rasterio.warp import transform_bounds

        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        if crs == self.crs:
            return west, south, east, north
        return transform_bounds(self.crs, crs, west, south, east, north)


def read_footprints(pairs) -> dict[str, Footprint]:
    """{chip id: footprint} of the ChipPairs whose image and mask share their grid, from the
    files' headers (no pixels are read). A pair whose grids differ (a truncated export), whose
    files lack a CRS or do not open fails to load anyway and is left out, so its label is
    merged nowhere."""
    footprints = {}
    for pair in pairs:
        footprint = _footprint(pair)
        if footprint is not None:
            footprints[pair.chip_id] = footprint
    return footprints


def _footprint(pair) -> Footprint | None:
    import rasterio

    try:
        with rasterio.open(pair.mask) as mask, rasterio.open(pair.image) as image:
            if mask.crs is None or image.crs is None:
                logger.warning("chip %s has no CRS (%s), left out of the overlaps", pair.chip_id,
                               pair.mask if mask.crs is None else pair.image)
                return None
            if (mask.width, mask.height, mask.crs) != (image.width, image.height, image.crs) \
                    or not mask.transform.almost_equals(image.transform):
                return None
            return Footprint(pair.chip_id, mask.crs, mask.transform, mask.width, mask.height)
    except rasterio.errors.RasterioIOError as error:  # quarantined by validation
        logger.warning("chip %s has no readable footprint, left out of the overlaps: %s",
                       pair.chip_id, error)
        return None


def overlapping_pairs(footprints: dict[str, Footprint]) -> list[tuple[str, str]]:
    """Sorted pairs of chips whose footprints share ground (an intersection of positive
    area, compared in the first chip's CRS); chips that only touch do not overlap."""
    ids = sorted(footprints)
    pairs = []
    for index, first in enumerate(ids):
        crs = footprints[first].crs
        left, bottom, right, top = footprints[first].bounds_in(crs)
        for second in ids[index + 1:]:
            other = footprints[second].bounds_in(crs)
            if min(right, other[2]) > max(left, other[0]) and \
                    min(top, other[3]) > max(bottom, other[1]):
                pairs.append((first, second))
    return pairs


def overlap_groups(footprints: dict[str, Footprint],
                   pairs: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """{chip id: group key}: chips linked by shared ground, directly or through others, have
    the same key, the smallest chip id of their group. pairs: overlapping_pairs(footprints),
    when already known."""
    parent = {chip_id: chip_id for chip_id in footprints}

    def root(chip_id: str) -> str:
        while parent[chip_id] != chip_id:
            parent[chip_id] = parent[parent[chip_id]]
            chip_id = parent[chip_id]
        return chip_id

    for first, second in overlapping_pairs(footprints) if pairs is None else pairs:
        a, b = root(first), root(second)
        parent[max(a, b)] = min(a, b)
    return {chip_id: root(chip_id) for chip_id in footprints}


def group_members(chip_ids, groups: dict[str, str] | None) -> dict[str, list[str]]:
    """{group key: sorted chip ids} of chip_ids under groups ({chip id: key}, as
    overlap_groups returns); a chip that groups does not name is a group of its own."""
    members: dict[str, list[str]] = {}
    for chip_id in sorted(set(chip_ids)):
        members.setdefault((groups or {}).get(chip_id, chip_id), []).append(chip_id)
    return members


def resample_mask(mask: np.ndarray, source: Footprint, target: Footprint) -> np.ndarray:
    """mask (of source's grid) on target's grid, nearest neighbour; NOT_COVERED where the
    source does not reach."""
    from rasterio.warp import Resampling, reproject

    out = np.full((target.height, target.width), NOT_COVERED, np.uint8)
    reproject(np.ascontiguousarray(mask, np.uint8), out, src_transform=source.transform,
              src_crs=source.crs, dst_transform=target.transform, dst_crs=target.crs,
              resampling=Resampling.nearest, src_nodata=NOT_COVERED, dst_nodata=NOT_COVERED)
    return out


def merge_labels(chips: list, footprints: dict[str, Footprint],
                 mask_paths: dict[str, str | Path],
                 pairs: list[tuple[str, str]] | None = None) -> list:
    """The chips with each mask the union of its own labels and the labels (as stored in
    mask_paths) of every chip in footprints that shares ground with it (pairs:
    overlapping_pairs(footprints), when already known). Chips without a footprint, or without
    overlapping chips, come back unchanged."""
    from tailseg.errors import TailsegError
    from tailseg.raster import read_mask

    def stored(chip_id: str) -> np.ndarray | None:
        try:
            return read_mask(mask_paths[chip_id]).data
        except TailsegError as error:  # a quarantined chip's mask gives no labels
            logger.warning("not merging the labels of %s: %s", chip_id, error)
            return None

    neighbours: dict[str, list[str]] = {}
    for first, second in overlapping_pairs(footprints) if pairs is None else pairs:
        neighbours.setdefault(first, []).append(second)
        neighbours.setdefault(second, []).append(first)
    merged = []
    for chip in chips:
        mask = chip.mask
        for other in neighbours.get(chip.chip_id, []):
            labels = stored(other)
            if labels is None:
                continue
            resampled = resample_mask(labels, footprints[other], footprints[chip.chip_id])
            mask = np.where(resampled == 1, np.uint8(1), mask)
        merged.append(chip if mask is chip.mask else replace(chip, mask=mask))
    return merged


def apply_overlaps(chips: list, pairs, mode: str) -> tuple[list, dict[str, str]]:
    """(chips, groups) under DataConfig.overlaps: "ignore" changes nothing and groups
    nothing; "group" returns the overlap groups; "merge" also merges the labels."""
    if mode == "ignore":
        return chips, {}
    footprints = read_footprints(pairs)
    overlapping = overlapping_pairs(footprints)
    if mode == "merge":
        chips = merge_labels(chips, footprints, {pair.chip_id: pair.mask for pair in pairs},
                             overlapping)
    return chips, overlap_groups(footprints, overlapping)
