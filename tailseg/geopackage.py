"""Tailings sites as an OGC GeoPackage (one feature table, EPSG:4326), with sqlite3 alone.

Neither fiona nor pyogrio is installed (and GDAL's vector API is not reachable through
rasterio), so this writes the few parts of the GeoPackage 1.3 encoding a feature table needs
(OGC 12-128r18): the application id and version pragmas, gpkg_spatial_ref_sys with the three
required rows plus WGS 84, gpkg_contents, gpkg_geometry_columns, and geometries as
"StandardGeoPackageBinary" blobs (a GP header with the envelope, then ISO WKB). QGIS and GDAL
open it as a layer named `tailings`. The run's provenance is the layer description (JSON).
"""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

import shapely
from pyproj import CRS

APPLICATION_ID = 0x47504B47  # "GPKG"
USER_VERSION = 10300  # GeoPackage 1.3.0
LAYER = "tailings"
WGS84_SRS_ID = 4326
GEOMETRY_FLAGS = 0b0000_0011  # little-endian, envelope [minx, maxx, miny, maxy], not empty

SCHEMA = """
CREATE TABLE gpkg_spatial_ref_sys (
  srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, organization TEXT NOT NULL,
  organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT);
CREATE TABLE gpkg_contents (
  table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
  description TEXT DEFAULT '',
  last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
  CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
CREATE TABLE gpkg_geometry_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
  srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
  CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
  CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
  CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id));
CREATE TABLE tailings (
  fid INTEGER PRIMARY KEY AUTOINCREMENT, geom MULTIPOLYGON, id INTEGER, area_ha REAL,
  pixels INTEGER, mean_probability REAL);
"""


def geometry_blob(geometry: shapely.Geometry, srs_id: int = WGS84_SRS_ID) -> bytes:
    """A StandardGeoPackageBinary geometry: GP header, XY envelope, little-endian ISO WKB."""
    minx, miny, maxx, maxy = geometry.bounds
    header = b"GP" + struct.pack("<BBi4d", 0, GEOMETRY_FLAGS, srs_id, minx, maxx, miny, maxy)
    return header + shapely.to_wkb(geometry, byte_order=1, flavor="iso")


def read_geometry(blob: bytes) -> shapely.Geometry:
    """The geometry of a blob written by geometry_blob (for tests and round trips)."""
    if blob[:2] != b"GP" or blob[3] != GEOMETRY_FLAGS:
        raise ValueError("not a little-endian GeoPackage geometry with an XY envelope")
    return shapely.from_wkb(blob[8 + 32:])


def write_geopackage(sites: list, path: str | Path, properties: dict | None = None) -> Path:
    """Write tailseg.vectorize.Site objects as the `tailings` layer of a new GeoPackage."""
    path = Path(path)
    path.unlink(missing_ok=True)
    rows = [(site.id, geometry_blob(shapely.MultiPolygon(getattr(site.geometry, "geoms",
                                                                 [site.geometry]))),
             round(site.area_ha, 4), site.pixels,
             None if site.mean_probability is None else round(site.mean_probability, 4))
            for site in sites]
    bounds = (shapely.total_bounds([s.geometry for s in sites]) if sites
              else (None, None, None, None))
    wkt1 = CRS.from_epsg(4326).to_wkt("WKT1_GDAL")
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {USER_VERSION}")
            connection.executescript(SCHEMA)
            # definition is WKT1 (OGC 01-009, GeoPackage 1.3 Table 21); WKT2 would belong in
            # the definition_12_063 column of the crs_wkt extension, which this file omits.
            connection.executemany(
                "INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                [("Undefined cartesian SRS", -1, "NONE", -1, "undefined", None),
                 ("Undefined geographic SRS", 0, "NONE", 0, "undefined", None),
                 ("WGS 84 geodetic", WGS84_SRS_ID, "EPSG", 4326, wkt1,
                  "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid")])
            connection.execute(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
                "min_x, min_y, max_x, max_y, srs_id) VALUES (?, 'features', ?, ?, ?, ?, ?, ?, ?)",
                (LAYER, LAYER, json.dumps(properties or {}), *map(_number, bounds),
                 WGS84_SRS_ID))
            connection.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', "
                               "'MULTIPOLYGON', ?, 0, 0)", (LAYER, WGS84_SRS_ID))
            connection.executemany("INSERT INTO tailings (id, geom, area_ha, pixels, "
                                   "mean_probability) VALUES (?, ?, ?, ?, ?)", rows)
    finally:
        connection.close()
    return path


def _number(value) -> float | None:
    return None if value is None else float(value)
