"""Change between two dates: tailings sites that appeared, disappeared, grew or shrank.

Sites of the two dates are matched by overlap. Two sites are linked when they overlap by at
least one pixel's area and by at least MIN_OVERLAP_SHARE of the smaller one, so the sliver
that a misregistration of a fraction of a pixel leaves between neighbours links nothing.
Sites linked through overlaps (a pond that merged with its neighbour, a dam split in two) form
one group, compared by total area:
- appeared: after-sites overlapping no before-site; disappeared: the reverse;
- grew / shrank: the area changed by more than min_relative_change of the before area and
  more than min_change_ha; unchanged otherwise.
Only what both dates observed is compared. The nodata of each date's <stem>_mask.tif (255:
outside the footprint, clouds masked upstream) gives where it was observed; a group with more
than a pixel outside the intersection of the two footprints is `partly_observed` (areas
measured inside it, `observed_status` what they say) or, with nothing inside, `unobserved`.
Without the masks, coverage is not checked, and the output says so.
Areas are recomputed on the WGS84 ellipsoid from the geometries, so the two GeoJSONs may come
from scenes of different grids or CRSs. Sites smaller than min_area_ha (default 0.5 ha, as in
prediction: tailseg.constants.MIN_SITE_AREA_HA) are ignored, so specks that come and go with
the noise of the model or the pixel grid are not reported as changes.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.features import shapes
from shapely.geometry import mapping, shape
from shapely.validation import explain_validity

from tailseg.config import ChangeConfig
from tailseg.errors import CoverageError, CRSMissingError, OutputExistsError, VectorReadError
from tailseg.predict import MASK_NODATA
from tailseg.raster import open_raster
from tailseg.vectorize import WGS84, geodesic_area_ha, to_wgs84

logger = logging.getLogger(__name__)

SQUARE_METRES_PER_HECTARE = 10_000.0
# A Sentinel-2 pixel (10 m x 10 m): the least overlap that links two sites, and the coverage
# tolerance, when no mask gives the pixel size.
DEFAULT_PIXEL_AREA_M2 = 100.0
# Sites overlapping by less than this share of the smaller one are not linked: 3 m (0.3 pixel)
# of misregistration between neighbours 400 m wide overlap by 0.75 % of the smaller one.
MIN_OVERLAP_SHARE = 0.1


@dataclass(frozen=True)
class Sites:
    """The polygons of a tailings GeoJSON in file order, with each feature's `id`."""

    geometries: list[shapely.Geometry]
    ids: list[int | str]


@dataclass(frozen=True)
class Footprint:
    """Where one date was observed (mask value not nodata), in EPSG:4326 lon/lat."""

    geometry: shapely.Geometry
    pixel_area_m2: float


def read_features(path: str | Path) -> Sites:
    """The sites of a tailings GeoJSON (as written by tailseg predict): RFC 7946, so WGS84
    longitude/latitude. Ids are the features' `id` property, else their 1-based position.

    Raises:
        VectorReadError: naming the file (and feature) when the file is missing, not a
            FeatureCollection of valid polygons, declares another CRS or has coordinates
            outside longitude -180..180 / latitude -90..90.
    """
    path = Path(path)
    if not path.is_file():
        raise VectorReadError(f"{path}: GeoJSON file not found")
    try:
        collection = json.loads(path.read_text())
        features = collection["features"]
        geometries = [shape(f["geometry"]) for f in features]
        ids = [_feature_id(feature, index) for index, feature in enumerate(features)]
        crs = collection.get("crs")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise VectorReadError(f"{path}: not a GeoJSON FeatureCollection ({error!r}); pass the "
                              "<stem>_tailings.geojson written by `tailseg predict`") from error
    _check_crs(path, crs)
    wrong = [g.geom_type for g in geometries if g.geom_type not in ("Polygon", "MultiPolygon")]
    if wrong:
        raise VectorReadError(f"{path}: {len(wrong)} features are not polygons ({wrong[0]})")
    for index, geometry in enumerate(geometries):
        _check_lonlat(path, index, geometry)
    # Overlaps and areas of an invalid polygon (a bow-tie, a ring crossing itself) are
    # undefined: GEOS stops with a TopologyException in the middle of the comparison.
    invalid = [index for index, geometry in enumerate(geometries) if not geometry.is_valid]
    if invalid:
        first = invalid[0]
        raise VectorReadError(
            f"{path}: {len(invalid)} invalid polygon(s); feature {first} (0-based, in file "
            f"order) is invalid: {explain_validity(geometries[first])}. Repair them (e.g. "
            "shapely.make_valid, or QGIS 'Fix geometries') or predict the scene again")
    for index, geometry in enumerate(geometries):
        if not math.isfinite(geodesic_area_ha(geometry)):
            raise VectorReadError(f"{path}: feature {index} (0-based) has no finite area on "
                                  "the WGS84 ellipsoid; predict the scene again")
    return Sites(geometries, ids)


def read_sites(path: str | Path) -> list[shapely.Geometry]:
    """The polygons of a tailings GeoJSON, in file order (see read_features)."""
    return read_features(path).geometries


def _feature_id(feature: dict, index: int) -> int | str:
    properties = feature.get("properties") or {}
    value = properties.get("id", feature.get("id"))
    return value if isinstance(value, int | str) and not isinstance(value, bool) else index + 1


def _check_crs(path: Path, member) -> None:
    """Refuse a legacy (GeoJSON 2008) `crs` member naming anything but WGS84 lon/lat."""
    if member is None:
        return
    name = (member.get("properties") or {}).get("name") if isinstance(member, dict) else None
    try:
        crs = CRS.from_user_input(name) if isinstance(name, str) else None
    except CRSError:
        crs = None
    if crs is None or not crs.equals(WGS84, ignore_axis_order=True):
        raise VectorReadError(
            f"{path}: declares the coordinate reference system {name or member!r}, but tailings "
            "GeoJSON must be WGS84 longitude/latitude (RFC 7946; `tailseg predict` writes it); "
            f"reproject it, e.g. `ogr2ogr -t_srs EPSG:4326 out.geojson {path.name}`")


def _check_lonlat(path: Path, index: int, geometry: shapely.Geometry) -> None:
    xy = shapely.get_coordinates(geometry)
    bad = ~np.isfinite(xy).all(axis=1) | (np.abs(xy[:, 0]) > 180) | (np.abs(xy[:, 1]) > 90)
    if bad.any():
        x, y = xy[np.flatnonzero(bad)[0]]
        raise VectorReadError(
            f"{path}: feature {index} (0-based) has the coordinate ({x}, {y}), outside "
            "longitude -180..180 / latitude -90..90: not WGS84 lon/lat as RFC 7946 requires "
            f"(a projected CRS?); reproject it, e.g. `ogr2ogr -t_srs EPSG:4326 out.geojson "
            f"{path.name}`")


def sibling_mask(sites_path: str | Path) -> Path | None:
    """The <stem>_mask.tif that `tailseg predict` wrote beside <stem>_tailings.geojson, if any."""
    sites_path = Path(sites_path)
    if not sites_path.stem.endswith("_tailings"):
        return None
    mask = sites_path.with_name(f"{sites_path.stem.removesuffix('_tailings')}_mask.tif")
    return mask if mask.is_file() else None


def read_footprint(mask_path: str | Path) -> Footprint:
    """Where a prediction mask is not nodata (255), as one lon/lat geometry, and the ground
    area of the mask's pixel at its centre."""
    with open_raster(mask_path) as dataset:
        if dataset.crs is None:
            raise CRSMissingError(f"{mask_path}: the mask has no CRS; pass the "
                                  "<stem>_mask.tif written by `tailseg predict`")
        valid = dataset.read(1) != MASK_NODATA
        crs, transform = dataset.crs, dataset.transform
    height, width = valid.shape
    pixel = math.hypot(transform.a, transform.b)

    def cell(col: float, row: float, cols: float, rows: float) -> shapely.Polygon:
        corners = [(col, row), (col + cols, row), (col + cols, row + rows), (col, row + rows)]
        return shapely.Polygon([transform * corner for corner in corners])

    if valid.all():
        native = cell(0, 0, width, height)
    else:
        parts = [shape(g) for g, _ in shapes(valid.view(np.uint8), mask=valid,
                                             transform=transform)]
        native = shapely.union_all(shapely.make_valid(np.asarray(parts, dtype=object)))
    lonlat, centre = to_wgs84([native, cell(width // 2, height // 2, 1, 1)], crs, pixel)
    return Footprint(shapely.make_valid(lonlat),
                     geodesic_area_ha(centre) * SQUARE_METRES_PER_HECTARE)


def _area_m2(geometry: shapely.Geometry) -> float:
    return geodesic_area_ha(geometry) * SQUARE_METRES_PER_HECTARE


def _groups(before: list, after: list, pixel_area_m2: float) -> list[tuple[list[int], list[int]]]:
    """Connected components of the graph of meaningful overlaps (at least a pixel's area and
    MIN_OVERLAP_SHARE of the smaller site), as (before indices, after indices)."""
    parent = list(range(len(before) + len(after)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = shapely.STRtree(after)
    pairs = tree.query(np.asarray(before, dtype=object), predicate="intersects")
    for b, a in zip(*pairs, strict=True):
        overlap = _area_m2(before[b].intersection(after[a]))  # touching edges: zero
        smaller = min(_area_m2(before[b]), _area_m2(after[a]))
        if overlap > 0 and overlap >= max(pixel_area_m2, MIN_OVERLAP_SHARE * smaller):
            parent[find(int(b))] = find(len(before) + int(a))
    members: dict[int, tuple[list[int], list[int]]] = {}
    for index in range(len(parent)):
        group = members.setdefault(find(index), ([], []))
        if index < len(before):
            group[0].append(index)
        else:
            group[1].append(index - len(before))
    return list(members.values())


def _status(area_before: float, area_after: float, config: ChangeConfig) -> str:
    if area_before == 0:
        return "appeared"
    if area_after == 0:
        return "disappeared"
    change = area_after - area_before
    if abs(change) <= max(config.min_relative_change * area_before, config.min_change_ha):
        return "unchanged"
    return "grew" if change > 0 else "shrank"


def _large(sites: list, min_area_ha: float, date: str) -> list:
    """Sites below min_area_ha replaced by empty geometries, so the others keep their ids.

    Raises:
        ValueError: a site has no finite area (not lon/lat: NaN would drop it silently).
    """
    areas = [geodesic_area_ha(site) for site in sites]
    if not all(map(math.isfinite, areas)):
        index = next(i for i, area in enumerate(areas) if not math.isfinite(area))
        raise ValueError(f"{date} site {index} (0-based) has the area {areas[index]}: its "
                         "coordinates are not WGS84 longitude/latitude")
    return [site if area >= min_area_ha else shapely.Polygon()
            for site, area in zip(sites, areas, strict=True)]


def _coverage(whole: shapely.Geometry, before: shapely.Geometry, after: shapely.Geometry,
              observed: shapely.Geometry | None, pixel_area_m2: float, config: ChangeConfig
              ) -> tuple[str, float | None, float, float]:
    """A group's status, observed share and areas in ha (inside `observed` unless the group
    lies inside it to within a pixel)."""
    area_before, area_after = geodesic_area_ha(before), geodesic_area_ha(after)
    if observed is None:
        return _status(area_before, area_after, config), None, area_before, area_after
    seen = _area_m2(whole.intersection(observed))
    total = _area_m2(whole)
    if total - seen <= pixel_area_m2:
        return _status(area_before, area_after, config), 1.0, area_before, area_after
    share = seen / total
    if seen <= pixel_area_m2:
        return "unobserved", share, 0.0, 0.0
    return ("partly_observed", share, geodesic_area_ha(before.intersection(observed)),
            geodesic_area_ha(after.intersection(observed)))


def compare_sites(before: list, after: list, config: ChangeConfig | None = None, *,
                  before_ids: list | None = None, after_ids: list | None = None,
                  observed: shapely.Geometry | None = None,
                  pixel_area_m2: float = DEFAULT_PIXEL_AREA_M2) -> list[dict]:
    """GeoJSON features, one per group of overlapping sites, with status and areas in ha.

    Args:
        before, after: lon/lat (multi)polygons of the two dates.
        before_ids, after_ids: the sites' ids for before_ids/after_ids (default: 1-based
            positions).
        observed: where both dates were observed (lon/lat), or None: coverage not checked.
        pixel_area_m2: the least overlap that links sites, and the coverage tolerance.

    The geometry is the union of the group's after-sites (the before-sites if there are none),
    exteriors counter-clockwise (RFC 7946).
    """
    config = config or ChangeConfig()
    before_ids = before_ids or list(range(1, len(before) + 1))
    after_ids = after_ids or list(range(1, len(after) + 1))
    before = _large(before, config.min_area_ha, "before")
    after = _large(after, config.min_area_ha, "after")
    features = []
    for group_before, group_after in _groups(before, after, pixel_area_m2):
        group_before = [i for i in group_before if not before[i].is_empty]
        group_after = [i for i in group_after if not after[i].is_empty]
        if not group_before and not group_after:
            continue  # a site below min_area_ha
        union_before = shapely.union_all([before[i] for i in group_before])
        union_after = shapely.union_all([after[i] for i in group_after])
        status, share, area_before, area_after = _coverage(
            shapely.union(union_before, union_after), union_before, union_after, observed,
            pixel_area_m2, config)
        match status:
            case "unobserved":
                observed_status = None
            case "partly_observed":
                observed_status = _status(area_before, area_after, config)
            case _:
                observed_status = status
        properties = {
            "status": status, "observed_status": observed_status,
            "observed_share": None if share is None else round(share, 4),
            "area_before_ha": round(area_before, 4), "area_after_ha": round(area_after, 4),
            "area_change_ha": round(area_after - area_before, 4),
            "before_ids": [before_ids[i] for i in group_before],
            "after_ids": [after_ids[i] for i in group_after],
        }
        kept = union_after if group_after else union_before
        features.append({"type": "Feature", "properties": properties,
                         "geometry": mapping(shapely.orient_polygons(kept, exterior_cw=False))})
    features.sort(key=lambda f: -abs(f["properties"]["area_change_ha"]))
    for number, feature in enumerate(features, start=1):
        feature["id"] = feature["properties"]["id"] = number
    return features


def _check_inside(sites: Sites, footprint: Footprint, sites_path, mask_path) -> None:
    """Refuse a mask that does not belong to the sites: they must lie in its footprint."""
    if not sites.geometries:
        return
    union = shapely.union_all(sites.geometries)
    outside = _area_m2(union.difference(footprint.geometry))
    if outside > max(footprint.pixel_area_m2, 0.01 * _area_m2(union)):
        raise CoverageError(
            f"{mask_path}: {outside / SQUARE_METRES_PER_HECTARE:.2f} ha of the sites of "
            f"{sites_path} lie in its nodata or outside it, so it is not the mask they were "
            "predicted with; pass the <stem>_mask.tif written beside them (--before-mask / "
            "--after-mask)")


def detect_change(before_path: str | Path, after_path: str | Path, out_path: str | Path,
                  config: ChangeConfig | None = None, overwrite: bool = False,
                  before_mask: str | Path | None = None, after_mask: str | Path | None = None
                  ) -> dict:
    """Compare two tailings GeoJSONs and write the change GeoJSON; return a summary.

    Each date's mask (nodata 255 where it was not observed) is before_mask / after_mask, else
    the <stem>_mask.tif beside <stem>_tailings.geojson; without both, coverage is not checked
    (a warning, and `coverage_checked: false` in the output and the summary).

    Raises:
        OutputExistsError: out_path exists and overwrite is False.
        VectorReadError: a GeoJSON is unreadable, invalid or not WGS84 lon/lat.
        CoverageError: the sites of a date lie outside its mask's footprint.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise OutputExistsError(f"{out_path}: already exists; pass --overwrite to replace it")
    paths = {"before": Path(before_path), "after": Path(after_path)}
    sites = {key: read_features(path) for key, path in paths.items()}
    masks = {"before": before_mask, "after": after_mask}
    masks = {key: Path(mask) if mask else sibling_mask(paths[key]) for key, mask in masks.items()}
    footprints = {}
    for key, mask in masks.items():
        if mask is not None:
            footprints[key] = read_footprint(mask)
            _check_inside(sites[key], footprints[key], paths[key], mask)
    checked = len(footprints) == 2
    if not checked:
        missing = " and ".join(f"{paths[key]}" for key in masks if masks[key] is None)
        logger.warning("coverage not checked: no <stem>_mask.tif beside %s (pass --before-mask "
                       "/ --after-mask); sites under clouds or outside a scene count as "
                       "disappeared or appeared", missing)
    observed = (shapely.intersection_all([f.geometry for f in footprints.values()])
                if footprints else None)
    pixel_area_m2 = max((f.pixel_area_m2 for f in footprints.values()),
                        default=DEFAULT_PIXEL_AREA_M2)
    features = compare_sites(sites["before"].geometries, sites["after"].geometries, config,
                             before_ids=sites["before"].ids, after_ids=sites["after"].ids,
                             observed=observed, pixel_area_m2=pixel_area_m2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staged = out_path.with_name(f".{out_path.name}.tmp")
    coverage = {"coverage_checked": checked,
                "before_mask": None if masks["before"] is None else str(masks["before"]),
                "after_mask": None if masks["after"] is None else str(masks["after"])}
    collection = {"type": "FeatureCollection", "features": features,
                  "properties": {"before": str(before_path), "after": str(after_path),
                                 **coverage, "min_overlap_m2": round(pixel_area_m2, 2)}}
    staged.write_text(json.dumps(collection))
    staged.replace(out_path)
    counts = Counter(f["properties"]["status"] for f in features)
    return {"output": str(out_path), "counts": dict(counts),
            "area_change_ha": round(sum(f["properties"]["area_change_ha"] for f in features), 4),
            **coverage}
