"""Site polygons and change detection on masks built here: known areas, holes, connectivity."""

import json
import math

import numpy as np
import pytest
import shapely
from rasterio.transform import from_origin

from tailseg.change import _status, compare_sites, detect_change, read_sites
from tailseg.config import ChangeConfig
from tailseg.errors import VectorReadError
from tailseg.vectorize import geodesic_area_ha, polygonize, write_geojson
from tests.rasters import write_image, write_mask

# WGS84 ellipsoid, for areas computed independently of pyproj.
A, F = 6378137.0, 1 / 298.257223563
E2 = F * (2 - F)


def lonlat_box_area_m2(lat: float, dlon: float, dlat: float) -> float:
    """Area of a small lon/lat box centred at lat, from the meridian (M) and prime-vertical (N)
    radii of curvature of the ellipsoid."""
    phi = math.radians(lat)
    w = 1 - E2 * math.sin(phi) ** 2
    m, n = A * (1 - E2) / w**1.5, A / math.sqrt(w)
    return math.radians(dlon) * n * math.cos(phi) * math.radians(dlat) * m


def test_areas_of_known_squares_in_wgs84(tmp_path):
    pixel, origin = 1e-4, (-44.12, -20.11)
    mask = np.zeros((300, 300), np.uint8)
    sizes = {(10, 10): 20, (100, 150): 60, (200, 20): 5}
    for (top, left), size in sizes.items():
        mask[top:top + size, left:left + size] = 1
    path = write_mask(tmp_path / "mask.tif", mask, transform=from_origin(*origin, pixel, pixel))
    sites = polygonize(path)
    assert len(sites) == 3
    for site in sites:
        lon, lat = site.geometry.centroid.x, site.geometry.centroid.y
        size = round(math.sqrt(site.pixels))
        expected = lonlat_box_area_m2(lat, size * pixel, size * pixel) / 1e4
        assert site.area_ha == pytest.approx(expected, rel=0.01)
        assert -44.12 < lon < -44.09 and -20.14 < lat < -20.11
    assert sorted(s.pixels for s in sites) == [25, 400, 3600]


def test_areas_of_known_squares_in_utm(tmp_path):
    # EPSG:32723 (UTM 23S), 10 m pixels near the central meridian (45 W), scale factor 0.9996:
    # grid areas are 0.9996^2 of true areas.
    mask = np.zeros((200, 200), np.uint8)
    mask[20:70, 30:80] = 1  # 50 x 50 pixels = 25 ha on the grid
    mask[100:110, 150:190] = 1  # 10 x 40 pixels = 4 ha
    path = write_mask(tmp_path / "mask.tif", mask, crs="EPSG:32723",
                      transform=from_origin(500000, 7776000, 10, 10))
    areas = sorted(site.area_ha for site in polygonize(path))
    assert areas == pytest.approx([4 / 0.9996**2, 25 / 0.9996**2], rel=0.01)
    # 1 % is loose: the ellipsoidal area agrees with the scale factor to 0.05 %.
    assert areas == pytest.approx([4 / 0.9996**2, 25 / 0.9996**2], rel=5e-4)


def test_holes_are_subtracted_and_connectivity_is_honoured(tmp_path):
    mask = np.zeros((60, 60), np.uint8)
    mask[5:25, 5:25] = 1
    mask[10:20, 10:20] = 0  # a 10 x 10 hole in a 20 x 20 square
    mask[30:40, 30:40] = 1
    mask[40:50, 40:50] = 1  # touches the previous square at one corner only
    path = write_mask(tmp_path / "mask.tif", mask, crs="EPSG:32723",
                      transform=from_origin(500000, 7776000, 10, 10))
    four = polygonize(path, connectivity=4)
    assert sorted(s.pixels for s in four) == [100, 100, 300]
    holed = next(s for s in four if s.pixels == 300)
    assert holed.area_ha == pytest.approx(3.0, rel=0.01)
    assert len(holed.geometry.interiors) == 1
    assert sorted(s.pixels for s in polygonize(path, connectivity=8)) == [200, 300]
    assert [s.pixels for s in polygonize(path, min_area_ha=2.5)] == [300]


def test_nodata_and_background_are_not_sites_and_mean_probability(tmp_path):
    transform = from_origin(500000, 7776000, 10, 10)
    mask = np.full((40, 40), 255, np.uint8)
    mask[:, 10:] = 0
    mask[10:20, 20:30] = 1
    probability = np.full((1, 40, 40), np.nan, np.float32)
    probability[0, :, 10:] = 0.1
    probability[0, 10:20, 20:30] = np.linspace(0.6, 1.0, 100).reshape(10, 10)
    mask_path = write_mask(tmp_path / "mask.tif", mask, crs="EPSG:32723", transform=transform)
    prob_path = write_image(tmp_path / "prob.tif", probability, crs="EPSG:32723",
                            transform=transform, descriptions=None, nodata=float("nan"))
    sites = polygonize(mask_path, prob_path)
    assert len(sites) == 1
    assert sites[0].mean_probability == pytest.approx(0.8, abs=1e-5)
    out = write_geojson(sites, tmp_path / "sites.geojson", {"threshold": 0.5})
    feature = json.loads(out.read_text())["features"][0]
    assert feature["properties"]["id"] == 1 and feature["geometry"]["type"] == "Polygon"
    assert feature["properties"]["area_ha"] == pytest.approx(1.0, rel=0.01)
    lon, lat = feature["geometry"]["coordinates"][0][0]
    assert -46 < lon < -44 and -21 < lat < -20  # EPSG:4326, longitude first


def _sites_file(tmp_path, name, squares):
    mask = np.zeros((120, 120), np.uint8)
    for top, left, height, width in squares:
        mask[top:top + height, left:left + width] = 1
    path = write_mask(tmp_path / f"{name}.tif", mask, crs="EPSG:32723",
                      transform=from_origin(500000, 7776000, 10, 10))
    return write_geojson(polygonize(path), tmp_path / f"{name}.geojson")


def test_change_between_two_dates(tmp_path):
    before = _sites_file(tmp_path, "before", [(0, 0, 10, 10), (30, 30, 10, 10),
                                              (60, 60, 10, 10), (100, 0, 10, 10),
                                              (100, 30, 10, 10)])
    after = _sites_file(tmp_path, "after", [(30, 30, 20, 10),  # grew from 1 to 2 ha
                                            (60, 60, 10, 10),  # unchanged
                                            (0, 100, 10, 10),  # appeared
                                            (100, 0, 10, 40)])  # two sites merged and grew
    summary = detect_change(before, after, tmp_path / "out" / "change.geojson")
    assert summary["counts"] == {"grew": 2, "unchanged": 1, "appeared": 1, "disappeared": 1}
    features = json.loads((tmp_path / "out" / "change.geojson").read_text())["features"]
    by_status = {}
    for feature in features:
        by_status.setdefault(feature["properties"]["status"], []).append(feature["properties"])
    assert by_status["disappeared"][0]["area_change_ha"] == pytest.approx(-1.0, rel=0.01)
    assert by_status["appeared"][0]["area_after_ha"] == pytest.approx(1.0, rel=0.01)
    merged = next(p for p in by_status["grew"] if len(p["before_ids"]) == 2)
    assert merged["area_before_ha"] == pytest.approx(2.0, rel=0.01)
    assert merged["area_change_ha"] == pytest.approx(2.0, rel=0.01)
    assert summary["area_change_ha"] == pytest.approx(1 + 1 - 1 + 2, rel=0.01)
    # A stricter relative threshold turns the 100 % growth into "unchanged".
    strict = compare_sites(read_sites(before), read_sites(after),
                           ChangeConfig(min_relative_change=1.5))
    assert sum(f["properties"]["status"] == "unchanged" for f in strict) == 3


def test_change_rejects_bad_geojson(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "Feature"}')
    with pytest.raises(VectorReadError, match="bad.geojson"):
        read_sites(bad)
    with pytest.raises(VectorReadError, match="not found"):
        read_sites(tmp_path / "missing.geojson")
    assert compare_sites([], []) == []


def test_change_refuses_a_self_intersecting_polygon_naming_file_and_feature(tmp_path):
    square = [[0, 0], [0, 0.01], [0.01, 0.01], [0.01, 0], [0, 0]]
    bow_tie = [[0, 0], [0.01, 0.01], [0.01, 0], [0, 0.01], [0, 0]]  # crosses itself
    features = [{"type": "Feature", "properties": {},
                 "geometry": {"type": "Polygon", "coordinates": [ring]}}
                for ring in (square, bow_tie)]
    before = tmp_path / "before.geojson"
    before.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    after = tmp_path / "after.geojson"
    after.write_text(json.dumps({"type": "FeatureCollection", "features": features[:1]}))
    with pytest.raises(VectorReadError, match=r"before\.geojson: 1 invalid polygon.*feature 1 "
                                              r".*Self-intersection"):
        detect_change(before, after, tmp_path / "change.geojson")
    assert not (tmp_path / "change.geojson").exists()


@pytest.mark.parametrize("crs, transform", [
    ("EPSG:32723", from_origin(500000, 7776000, 10, 10)),
    ("EPSG:4326", from_origin(-44.12, -20.11, 9e-5, 9e-5))])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_polygons_are_valid_counter_clockwise_and_rounded(crs, transform, connectivity, tmp_path):
    # Diagonal chains, a ring with a hole and noise: 8-connected shapes touch themselves at
    # vertices, which rasterio returns as invalid rings.
    rng = np.random.default_rng(0)
    mask = (rng.random((60, 60)) > 0.55).astype(np.uint8)
    mask[5:25, 5:25] = 1
    mask[10:20, 10:20] = 0
    mask[10, 10] = mask[11, 11] = mask[12, 12] = 1  # a diagonal chain inside the hole
    path = write_mask(tmp_path / "mask.tif", mask, crs=crs, transform=transform)
    sites = polygonize(path, connectivity=connectivity)
    assert len(sites) > 5
    for site in sites:
        assert site.geometry.is_valid, (site.id, shapely.is_valid_reason(site.geometry))
        for polygon in getattr(site.geometry, "geoms", [site.geometry]):
            assert polygon.exterior.is_ccw  # RFC 7946 right-hand rule
            assert all(not ring.is_ccw for ring in polygon.interiors)
        coordinates = shapely.get_coordinates(site.geometry)
        np.testing.assert_array_equal(coordinates, np.round(coordinates, 7))
    assert any(len(p.interiors) for s in sites for p in getattr(s.geometry, "geoms",
                                                                [s.geometry]))


def test_change_ignores_specks_below_the_minimum_area(tmp_path):
    # The same two 1 ha sites on both dates, with different single-pixel specks.
    before = _sites_file(tmp_path, "before", [(0, 0, 10, 10), (50, 50, 10, 10), (100, 100, 1, 1),
                                              (30, 90, 1, 1)])
    after = _sites_file(tmp_path, "after", [(0, 0, 10, 10), (50, 50, 10, 10), (110, 5, 1, 1)])
    summary = detect_change(before, after, tmp_path / "change.geojson")
    assert summary["counts"] == {"unchanged": 2}
    features = json.loads((tmp_path / "change.geojson").read_text())["features"]
    assert [f["properties"]["area_before_ha"] for f in features] == pytest.approx([1, 1],
                                                                                  rel=0.01)
    everything = compare_sites(read_sites(before), read_sites(after),
                               ChangeConfig(min_area_ha=0))
    assert sum(f["properties"]["status"] != "unchanged" for f in everything) == 3


def test_a_site_exactly_at_the_minimum_area_is_kept(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:25] = 1
    path = write_mask(tmp_path / "mask.tif", mask, crs="EPSG:32723",
                      transform=from_origin(500000, 7776000, 10, 10))
    (site,) = polygonize(path)
    assert [s.area_ha for s in polygonize(path, min_area_ha=site.area_ha)] == [site.area_ha]
    assert polygonize(path, min_area_ha=site.area_ha * (1 + 1e-9)) == []


def test_sites_that_only_share_an_edge_are_not_one_group():
    # A site gone and a new one beside it, sharing an edge (zero overlap area): two changes,
    # not one site that moved. A real overlap still makes one group.
    before = shapely.box(-44.12, -20.12, -44.11, -20.11)
    beside = shapely.box(-44.11, -20.12, -44.10, -20.11)
    statuses = sorted(f["properties"]["status"] for f in compare_sites([before], [beside]))
    assert statuses == ["appeared", "disappeared"]
    overlapping = shapely.box(-44.115, -20.12, -44.105, -20.11)
    (feature,) = compare_sites([before], [overlapping])
    assert feature["properties"]["status"] == "unchanged"
    assert (feature["properties"]["before_ids"], feature["properties"]["after_ids"]) == ([1], [1])


def test_a_site_exactly_at_the_change_minimum_area_counts():
    site = shapely.box(-44.12, -20.12, -44.11, -20.11)
    area = geodesic_area_ha(site)
    (feature,) = compare_sites([], [site], ChangeConfig(min_area_ha=area))
    assert feature["properties"]["status"] == "appeared"
    assert compare_sites([], [site], ChangeConfig(min_area_ha=area * (1 + 1e-9))) == []


def test_a_change_exactly_at_the_limits_is_unchanged():
    # 10 % of 10 ha is 1 ha: a change of exactly 1 ha is within the limit; and so is one of
    # exactly min_change_ha when that is the larger limit.
    assert _status(10.0, 11.0, ChangeConfig(min_relative_change=0.1)) == "unchanged"
    assert _status(10.0, 11.5, ChangeConfig(min_relative_change=0.1)) == "grew"
    assert _status(10.0, 8.0, ChangeConfig(min_relative_change=0.1, min_change_ha=2.0)) == (
        "unchanged")
    assert _status(10.0, 7.5, ChangeConfig(min_relative_change=0.1, min_change_ha=2.0)) == (
        "shrank")


def test_geopackage_spatial_ref_sys_definition_is_wkt1(tmp_path):
    # GeoPackage 1.3 (Table 21): gpkg_spatial_ref_sys.definition is WKT1 (OGC 01-009); WKT2
    # (GEOGCRS[...]) belongs only in the crs_wkt extension's definition_12_063 column.
    import sqlite3

    from pyproj import CRS

    from tailseg.geopackage import read_geometry, write_geopackage

    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:25] = 1
    sites = polygonize(write_mask(tmp_path / "mask.tif", mask, crs="EPSG:32723",
                                  transform=from_origin(500000, 7776000, 10, 10)))
    path = write_geopackage(sites, tmp_path / "sites.gpkg")
    with sqlite3.connect(path) as connection:
        (definition,) = connection.execute(
            "SELECT definition FROM gpkg_spatial_ref_sys WHERE srs_id = 4326").fetchone()
        (blob,) = connection.execute("SELECT geom FROM tailings").fetchone()
    assert definition.startswith('GEOGCS["WGS 84"')
    assert CRS.from_wkt(definition).equals(CRS.from_epsg(4326))
    assert shapely.equals(read_geometry(blob), sites[0].geometry)
