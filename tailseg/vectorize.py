"""Tailings sites as polygons: from a 0/1 mask raster to GeoJSON with geodesic areas.

Memory: polygonize() reads the uint8 mask whole (1 byte per pixel, 120 MB for a full
Sentinel-2 tile, plus a boolean copy), because a site may span any number of blocks. The
probability raster is read only inside each site's bounding box.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Geod, Transformer
from rasterio.features import geometry_mask, shapes
from rasterio.windows import Window, from_bounds
from shapely.geometry import mapping, shape
from shapely.geometry.polygon import orient

from tailseg.constants import TAILINGS
from tailseg.raster import open_raster

WGS84 = CRS.from_epsg(4326)
GEOD = Geod(ellps="WGS84")
SQUARE_METRES_PER_HECTARE = 10_000.0
# Edges are split into pieces of at most this many pixels before reprojection, so long
# straight edges in the source CRS stay close to their image after reprojection.
SEGMENT_PIXELS = 64


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


def to_wgs84(geometry: shapely.Geometry, crs, pixel_size: float) -> shapely.Geometry:
    """Reproject a geometry from crs to EPSG:4326, densifying long edges first."""
    source = CRS.from_user_input(crs)
    if source == WGS84:
        return geometry
    geometry = shapely.segmentize(geometry, SEGMENT_PIXELS * pixel_size)
    transformer = Transformer.from_crs(source, WGS84, always_xy=True)
    return shapely.transform(geometry, lambda xy: np.column_stack(
        transformer.transform(xy[:, 0], xy[:, 1])))


def _mean_probability(probability, geometry: shapely.Geometry) -> float | None:
    """Mean of the probability raster's valid pixels inside a geometry in its own CRS."""
    box = from_bounds(*geometry.bounds, transform=probability.transform)
    col, row = math.floor(box.col_off + 1e-6), math.floor(box.row_off + 1e-6)
    window = Window(col, row, math.ceil(box.col_off + box.width - 1e-6) - col,
                    math.ceil(box.row_off + box.height - 1e-6) - row)
    window = window.intersection(Window(0, 0, probability.width, probability.height))
    values = probability.read(1, window=window, masked=True)
    inside = geometry_mask([geometry], values.shape, probability.window_transform(window),
                           invert=True)
    selected = values[inside & ~np.ma.getmaskarray(values)]
    return float(selected.mean()) if selected.size else None


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
    pixel_size = math.hypot(transform.a, transform.b)
    geometries = [(shape(g), v) for g, v in shapes(foreground.view(np.uint8), mask=foreground,
                                                  connectivity=connectivity,
                                                  transform=transform)]
    del foreground
    sites: list[Site] = []
    probability = open_raster(probability_path) if probability_path else None
    try:
        for native, _ in geometries:
            lonlat = to_wgs84(native, crs, pixel_size)
            area = geodesic_area_ha(lonlat)
            if area < min_area_ha:
                continue
            mean = _mean_probability(probability, native) if probability else None
            pixels = round(native.area / abs(transform.a * transform.e - transform.b * transform.d))
            sites.append(Site(len(sites) + 1, lonlat, area, mean, pixels))
    finally:
        if probability is not None:
            probability.close()
    return sites


def write_geojson(sites: list[Site], path: str | Path, properties: dict | None = None) -> Path:
    """Write sites as an RFC 7946 FeatureCollection (EPSG:4326, lon/lat)."""
    collection = {"type": "FeatureCollection", "properties": properties or {},
                  "features": [site.feature() for site in sites]}
    path = Path(path)
    path.write_text(json.dumps(collection))
    return path
