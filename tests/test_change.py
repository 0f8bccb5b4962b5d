"""Change detection: WGS84 inputs only, coverage from the nodata of both dates' masks,
meaningful overlaps, RFC 7946 orientation and the sites' own ids."""

import json
import logging
import shutil

import numpy as np
import pyproj
import pytest
import shapely
from rasterio.transform import from_origin
from shapely.geometry import mapping, shape

from tailseg.change import compare_sites, detect_change, read_features, read_sites
from tailseg.cli import main
from tailseg.config import ChangeConfig
from tailseg.errors import CoverageError, VectorReadError
from tailseg.vectorize import polygonize, write_geojson
from tests.rasters import write_mask

UTM = "EPSG:32723"
UTM_TRANSFORM = from_origin(500000, 7776000, 10, 10)
NODATA = 255


def _predicted(folder, stem, squares, nodata=()):
    """<stem>_mask.tif and <stem>_tailings.geojson as `tailseg predict` writes them: squares
    (top, left, height, width) of tailings, then rectangles of nodata (255) over them."""
    mask = np.zeros((120, 120), np.uint8)
    for top, left, height, width in squares:
        mask[top:top + height, left:left + width] = 1
    for top, left, height, width in nodata:
        mask[top:top + height, left:left + width] = NODATA
    path = write_mask(folder / f"{stem}_mask.tif", mask, crs=UTM, transform=UTM_TRANSFORM)
    return write_geojson(polygonize(path), folder / f"{stem}_tailings.geojson")


def _collection(path, features, **members):
    path.write_text(json.dumps({"type": "FeatureCollection", **members, "features": [
        {"type": "Feature", "properties": properties, "geometry": mapping(geometry)}
        for geometry, properties in features]}))
    return path


SQUARE = shapely.box(-44.12, -20.12, -44.11, -20.11)  # about 1.1 km x 1.0 km


def test_a_geojson_in_another_crs_is_refused_naming_file_and_feature(tmp_path):
    # A UTM GeoJSON with the legacy "crs" member (a QGIS export without reprojection) used
    # to read as sites of NaN area, dropped: "everything disappeared".
    to_utm = pyproj.Transformer.from_crs(4326, 32723, always_xy=True)
    utm = shapely.transform(SQUARE, lambda xy: np.column_stack(to_utm.transform(*xy.T)))
    legacy = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32723"}}
    declared = _collection(tmp_path / "declared.geojson", [(utm, {})], crs=legacy)
    with pytest.raises(VectorReadError, match=r"declared\.geojson: declares .*EPSG::32723.*"
                                              r"WGS84 longitude/latitude"):
        read_sites(declared)
    # Without a "crs" member, the coordinates give it away.
    bare = _collection(tmp_path / "bare.geojson", [(SQUARE, {}), (utm, {})])
    with pytest.raises(VectorReadError, match=r"bare\.geojson: feature 1 \(0-based\) has the "
                                              r"coordinate .*outside longitude"):
        detect_change(bare, bare, tmp_path / "change.geojson")
    assert not (tmp_path / "change.geojson").exists()
    # From Python, a site that is not lon/lat has a NaN area: an error, not a dropped site.
    with pytest.raises(ValueError, match="after site 0 .* area nan"):
        compare_sites([SQUARE], [utm])
    # A "crs" member naming WGS84 lon/lat is fine.
    for name in ("urn:ogc:def:crs:OGC:1.3:CRS84", "EPSG:4326"):
        crs84 = {"type": "name", "properties": {"name": name}}
        path = _collection(tmp_path / "crs84.geojson", [(SQUARE, {})], crs=crs84)
        assert read_sites(path) == [SQUARE]


def test_unobserved_areas_are_not_reported_as_loss(tmp_path):
    squares = [(0, 0, 20, 20), (50, 50, 20, 20), (90, 90, 20, 20)]  # 4 ha each
    # Before: a fourth site where the later scene has nodata; after: clouds over half of the
    # second site and all of the third, and a new site where the earlier scene had nodata.
    before = _predicted(tmp_path, "2023", [*squares, (0, 50, 20, 20)], nodata=[(0, 90, 30, 30)])
    after = _predicted(tmp_path, "2025", [*squares, (0, 95, 20, 20)],
                       nodata=[(50, 50, 10, 20), (85, 85, 35, 35), (0, 40, 30, 30)])
    summary = detect_change(before, after, tmp_path / "change.geojson")
    assert summary["coverage_checked"] is True
    assert summary["counts"] == {"unchanged": 1, "partly_observed": 1, "unobserved": 3}
    assert summary["area_change_ha"] == pytest.approx(0, abs=1e-3)
    collection = json.loads((tmp_path / "change.geojson").read_text())
    assert collection["properties"]["after_mask"] == str(tmp_path / "2025_mask.tif")
    by_status = {}
    for feature in collection["features"]:
        by_status.setdefault(feature["properties"]["status"], []).append(feature["properties"])
    (half,) = by_status["partly_observed"]
    assert half["observed_share"] == pytest.approx(0.5, abs=1e-3)
    assert half["observed_status"] == "unchanged"
    assert half["area_before_ha"] == half["area_after_ha"] == pytest.approx(2.0, rel=0.01)
    assert all(p["observed_share"] == 0 and p["area_change_ha"] == 0
               for p in by_status["unobserved"])
    assert by_status["unchanged"][0]["observed_share"] == 1.0
    # Without the masks (GeoJSONs copied elsewhere), the old answer, saying so.
    alone = tmp_path / "alone"
    alone.mkdir()
    for path in (before, after):
        shutil.copy(path, alone / path.name)
    unchecked = detect_change(alone / before.name, alone / after.name, alone / "change.geojson")
    assert unchecked["coverage_checked"] is False
    assert unchecked["counts"] == {"unchanged": 1, "shrank": 1, "disappeared": 2,
                                   "appeared": 1}
    # The masks given explicitly, from the command line.
    assert main(["change", str(alone / before.name), str(alone / after.name), "--out",
                 str(tmp_path / "cli"), "--before-mask", str(tmp_path / "2023_mask.tif"),
                 "--after-mask", str(tmp_path / "2025_mask.tif")]) == 0
    cli = json.loads((tmp_path / "cli" / "2023_tailings_to_2025_tailings_change.geojson")
                     .read_text())
    assert cli["properties"]["coverage_checked"] is True
    assert sorted(f["properties"]["status"] for f in cli["features"]) == [
        "partly_observed", "unchanged", "unobserved", "unobserved", "unobserved"]


def test_a_warning_says_coverage_was_not_checked(tmp_path, caplog):
    path = _collection(tmp_path / "sites.geojson", [(SQUARE, {})])
    with caplog.at_level(logging.WARNING, logger="tailseg.change"):
        detect_change(path, path, tmp_path / "change.geojson")
    assert "coverage not checked" in caplog.text
    collection = json.loads((tmp_path / "change.geojson").read_text())
    assert collection["properties"]["coverage_checked"] is False
    assert collection["features"][0]["properties"]["observed_share"] is None


def test_a_mask_that_does_not_belong_to_the_sites_is_refused(tmp_path):
    before = _predicted(tmp_path, "before", [(0, 0, 20, 20)])
    after = _predicted(tmp_path, "after", [(0, 0, 20, 20)])
    other = write_mask(tmp_path / "other_mask.tif", np.full((120, 120), NODATA, np.uint8),
                       crs=UTM, transform=UTM_TRANSFORM)
    with pytest.raises(CoverageError, match=r"other_mask\.tif: 4\.\d+ ha of the sites of "
                                            r".*before_tailings\.geojson lie in its nodata"):
        detect_change(before, after, tmp_path / "change.geojson", before_mask=other)


def _utm_box(x0, y0, x1, y1):
    to_lonlat = pyproj.Transformer.from_crs(32723, 4326, always_xy=True)
    box = shapely.segmentize(shapely.box(x0, y0, x1, y1), 10)
    return shapely.transform(box, lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))


def test_a_misregistration_sliver_does_not_link_neighbours():
    # A 30 ha pond gone and a 20 ha pond beside it, 3 m (0.3 pixel) misregistration: 1500 m2
    # of overlap, 15 pixels but 0.75 % of the smaller site. Two changes, not one that shrank.
    gone = _utm_box(600000, 7770000, 600600, 7770500)
    new = _utm_box(600597, 7770000, 601000, 7770500)
    statuses = sorted(f["properties"]["status"] for f in compare_sites([gone], [new]))
    assert statuses == ["appeared", "disappeared"]
    # The same pond 3 m off, or grown into its neighbour, is still one site.
    (moved,) = compare_sites([gone], [_utm_box(600003, 7770000, 600603, 7770500)])
    assert moved["properties"]["status"] == "unchanged"
    (grown,) = compare_sites([gone], [_utm_box(600000, 7770000, 601000, 7770500)])
    assert grown["properties"]["status"] == "grew"
    # Tiny sites: at least a pixel's area of overlap, here pixels of 10 m.
    small = _utm_box(600000, 7770000, 600020, 7770020)  # 4 pixels
    assert len(compare_sites([small], [_utm_box(600017, 7770000, 600037, 7770020)],
                             ChangeConfig(min_area_ha=0))) == 2  # 60 m2, 15 % of each
    assert len(compare_sites([small], [_utm_box(600005, 7770000, 600025, 7770020)],
                             ChangeConfig(min_area_ha=0))) == 1


def test_merged_geometries_follow_the_right_hand_rule():
    # One site split in two, the two halves apart: a MultiPolygon from union_all, whose
    # exteriors GEOS returns clockwise.
    whole = shapely.box(-44, -20, -43.99, -19.99)
    halves = [shapely.box(-44, -20, -43.999, -19.99), shapely.box(-43.991, -20, -43.99, -19.99)]
    holed = shapely.Polygon(whole.exterior.coords,
                            [shapely.box(-43.998, -19.998, -43.992, -19.992).exterior.coords])
    for before, after in (([whole], halves), ([whole], [whole]), ([holed], [holed])):
        for feature in compare_sites(before, after, ChangeConfig(min_area_ha=0)):
            geometry = shape(feature["geometry"])
            for polygon in getattr(geometry, "geoms", [geometry]):
                assert polygon.exterior.is_ccw
                assert all(not ring.is_ccw for ring in polygon.interiors)


def test_group_ids_are_the_sites_own_ids(tmp_path):
    east = shapely.box(-44.10, -20.12, -44.09, -20.11)
    before = _collection(tmp_path / "before.geojson", [(SQUARE, {"id": 7}), (east, {"id": 3})])
    after = _collection(tmp_path / "after.geojson", [(east, {"id": 12}), (SQUARE, {})])
    assert read_features(before).ids == [7, 3]
    assert read_features(after).ids == [12, 2]  # no id: the 1-based position
    detect_change(before, after, tmp_path / "change.geojson")
    features = json.loads((tmp_path / "change.geojson").read_text())["features"]
    pairs = sorted((f["properties"]["before_ids"], f["properties"]["after_ids"])
                   for f in features)
    assert pairs == [([3], [12]), ([7], [2])]
