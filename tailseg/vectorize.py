"""Tailings sites as polygons: from a 0/1 mask raster to GeoJSON with ellipsoidal areas.

Areas are those on the WGS84 ellipsoid, computed for all sites at once in an equal-area
projection (Lambert azimuthal) centred on them; geodesic_area_ha() gives the same with
pyproj.Geod for single geometries. Every step is vectorised over the sites, because an
untrained or noisy model can produce tens of thousands of them.

Memory: polygonize() reads the uint8 mask whole (1 byte per pixel, 120 MB for a full
Sentinel-2 tile, plus a boolean copy), because a site may span any number of blocks; the
probability raster is read STRIP_ROWS rows at a time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer
from pyproj.exceptions import ProjError
from rasterio.features import rasterize, shapes
from rasterio.windows import Window
from shapely.geometry import mapping, shape
from shapely.geometry.polygon import orient

from tailseg.constants import TAILINGS
from tailseg.errors import CRSMissingError
from tailseg.raster import open_raster

WGS84 = CRS.from_epsg(4326)
GEOD = Geod(ellps="WGS84")
SQUARE_METRES_PER_HECTARE = 10_000.0
# Edges are split into pieces of at most this many pixels before reprojection, so long
# straight edges in the source CRS stay close to their image after reprojection.
SEGMENT_PIXELS = 64
STRIP_ROWS = 1024  # rows of the probability raster read at a time for site means
# Output coordinates are snapped to 1e-7 degrees: about 1 cm, a thousandth of a Sentinel-2
# pixel (15 decimals claimed a precision of nanometres).
COORDINATE_DECIMALS = 7


@dataclass(frozen=True)
class Site:
    """One connected tailings site. geometry is in EPSG:4326 (longitude, latitude)."""

    id: int
    geometry: shapely.Polygon
    area_ha: float
    mean_probability: float | None
    pixels: int

    def feature(self) -> dict:
        properties = {"id": self.id, "area_ha": round(self.area_ha, 4), "pixels": self.pixels,
                      "mean_probability": (None if self.mean_probability is None
                                           else round(self.mean_probability, 4))}
        return {"type": "Feature", "id": self.id, "properties": properties,
                "geometry": mapping(self.geometry)}


def geodesic_area_ha(geometry: shapely.Geometry) -> float:
    """Area on the WGS84 ellipsoid of a lon/lat (multi)polygon, holes subtracted, in hectares."""
    polygons = getattr(geometry, "geoms", [geometry])
    total = sum(GEOD.geometry_area_perimeter(orient(p, sign=1.0))[0] for p in polygons)
    return abs(total) / SQUARE_METRES_PER_HECTARE


def wgs84_transformer(crs, source: str | Path | None = None) -> Transformer:
    """The transformer from crs to EPSG:4326 (longitude, latitude).

    Raises:
        CRSMissingError: crs cannot be transformed to WGS84 (e.g. a local engineering CRS),
            named after the file `source` when given.
    """
    try:
        return Transformer.from_crs(CRS.from_user_input(crs), WGS84, always_xy=True)
    except ProjError as error:  # CRSError is a ProjError
        raise CRSMissingError(
            f"{f'{source}: ' if source else ''}{_crs_name(crs)} cannot be transformed to "
            f"WGS84 (EPSG:4326), so the outputs cannot be placed on a map "
            f"({str(error).rstrip('.')}); "
            "reproject the scene to a geographic or projected CRS, e.g. `gdalwarp -t_srs "
            "EPSG:32723 IN OUT`") from error


def _crs_name(crs) -> str:
    try:
        return f"the coordinate reference system '{CRS.from_user_input(crs).name}'"
    except ProjError:
        return f"the coordinate reference system {crs}"


def to_wgs84(geometries: list[shapely.Geometry], crs, pixel_size: float) -> np.ndarray:
    """Reproject geometries from crs to EPSG:4326 in one call, densifying long edges first."""
    geometries = np.asarray(geometries, dtype=object)
    source = CRS.from_user_input(crs)
    if source == WGS84:
        return geometries
    transformer = wgs84_transformer(source)
    geometries = shapely.segmentize(geometries, SEGMENT_PIXELS * pixel_size)
    return shapely.transform(geometries, lambda xy: np.column_stack(
        transformer.transform(xy[:, 0], xy[:, 1])))


def equal_area_ha(lonlat: np.ndarray) -> np.ndarray:
    """Areas in hectares of lon/lat geometries, in one call: in a Lambert azimuthal equal-area
    projection of the WGS84 ellipsoid centred on them, which preserves ellipsoidal areas."""
    if not len(lonlat):
        return np.zeros(0)
    minx, miny, maxx, maxy = shapely.total_bounds(lonlat)
    laea = CRS.from_proj4(f"+proj=laea +lat_0={(miny + maxy) / 2} +lon_0={(minx + maxx) / 2} "
                          "+ellps=WGS84 +units=m +no_defs")
    transformer = Transformer.from_crs(WGS84, laea, always_xy=True)
    projected = shapely.transform(lonlat, lambda xy: np.column_stack(
        transformer.transform(xy[:, 0], xy[:, 1])))
    return shapely.area(projected) / SQUARE_METRES_PER_HECTARE


def clean_lonlat(geometries: np.ndarray) -> np.ndarray:
    """Valid, RFC 7946-oriented polygons (exteriors counter-clockwise, holes clockwise) with
    coordinates rounded to COORDINATE_DECIMALS.

    rasterio's 8-connected shapes touch themselves at vertices (invalid rings), which
    make_valid splits into parts that meet at a point; rounding is done on the grid by GEOS,
    which keeps the result valid.
    """
    if not len(geometries):
        return geometries
    grid = 10.0 ** -COORDINATE_DECIMALS
    snapped = shapely.make_valid(shapely.set_precision(geometries, grid))
    polygonal = np.asarray([_polygonal(g) for g in snapped], dtype=object)
    oriented = shapely.orient_polygons(polygonal, exterior_cw=False)
    return shapely.transform(oriented, lambda xy: np.round(xy, COORDINATE_DECIMALS))


def _polygonal(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygons of a geometry (make_valid may add lines or points where rings touched)."""
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        return geometry
    parts = [p for p in shapely.get_parts(geometry) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts)


def _row_spans(natives: np.ndarray, transform) -> tuple[np.ndarray, np.ndarray]:
    """First and last-plus-one raster rows each geometry's bounding box touches."""
    minx, miny, maxx, maxy = shapely.bounds(natives).T
    inverse = ~transform
    rows = np.stack([inverse.d * x + inverse.e * y + inverse.f
                     for x in (minx, maxx) for y in (miny, maxy)])
    return np.floor(rows.min(axis=0) + 1e-6), np.ceil(rows.max(axis=0) - 1e-6)


def mean_probabilities(path: str | Path, features: list[dict], natives: np.ndarray
                       ) -> np.ndarray:
    """Mean valid probability inside each polygon (NaN if none), reading STRIP_ROWS rows at a
    time and burning the polygons that reach each strip with rasterize."""
    sums, counts = np.zeros(len(features) + 1), np.zeros(len(features) + 1)
    with open_raster(path) as dataset:
        first, last = _row_spans(natives, dataset.transform)
        for top in range(0, dataset.height, STRIP_ROWS):
            window = Window(0, top, dataset.width, min(STRIP_ROWS, dataset.height - top))
            selected = np.flatnonzero((first < top + window.height) & (last > top))
            if not selected.size:
                continue
            labels = rasterize(((features[i], i + 1) for i in selected),
                               out_shape=(window.height, window.width), fill=0, dtype="int32",
                               transform=dataset.window_transform(window))
            values = dataset.read(1, window=window, masked=True)
            keep = (labels > 0) & ~np.ma.getmaskarray(values)
            sums += np.bincount(labels[keep], weights=values.data[keep], minlength=len(sums))
            counts += np.bincount(labels[keep], minlength=len(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts)[1:]


def polygonize(mask_path: str | Path, probability_path: str | Path | None = None,
               connectivity: int = 4, min_area_ha: float = 0.0) -> list[Site]:
    """One Site per connected region of tailings (value 1) in a mask raster.

    Args:
        mask_path: uint8 mask, 1 = tailings; other values (0, nodata) are not polygonised.
        probability_path: a probability raster on the same grid for each site's mean, or None.
        connectivity: 4 (edge neighbours) or 8 (also diagonal neighbours).
        min_area_ha: sites smaller than this are dropped.
    """
    with open_raster(mask_path) as dataset:
        foreground = dataset.read(1) == TAILINGS
        crs, transform = dataset.crs, dataset.transform
    features = [g for g, _ in shapes(foreground.view(np.uint8), mask=foreground,
                                     connectivity=connectivity, transform=transform)]
    del foreground
    natives = np.asarray([shape(g) for g in features], dtype=object)
    lonlat = to_wgs84(natives, crs, math.hypot(transform.a, transform.b))
    areas = equal_area_ha(lonlat)
    pixels = np.rint(shapely.area(natives) / abs(transform.determinant)).astype(int)
    kept = np.flatnonzero(areas >= min_area_ha)  # before the means: specks cost nothing more
    if probability_path and len(kept):
        means = mean_probabilities(probability_path, [features[i] for i in kept], natives[kept])
    else:
        means = np.full(len(kept), np.nan)
    lonlat = clean_lonlat(np.asarray(lonlat, dtype=object)[kept])
    return [Site(number, lonlat[k], float(areas[i]),
                 None if np.isnan(means[k]) else float(means[k]), int(pixels[i]))
            for k, (number, i) in enumerate(enumerate(kept, start=1))]


def write_geojson(sites: list[Site], path: str | Path, properties: dict | None = None) -> Path:
    """Write sites as an RFC 7946 FeatureCollection (EPSG:4326, lon/lat)."""
    collection = {"type": "FeatureCollection", "properties": properties or {},
                  "features": [site.feature() for site in sites]}
    path = Path(path)
    path.write_text(json.dumps(collection))
    return path
