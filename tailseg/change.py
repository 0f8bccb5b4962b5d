"""Change between two dates: tailings sites that appeared, disappeared, grew or shrank.

Sites of the two dates are matched by overlap. Sites linked through overlaps (a pond that
merged with its neighbour, a dam split in two) form one group, compared by total area:
- appeared: after-sites overlapping no before-site; disappeared: the reverse;
- grew / shrank: the area changed by more than min_relative_change of the before area and
  more than min_change_ha; unchanged otherwise.
Areas are recomputed on the WGS84 ellipsoid from the geometries, so the two GeoJSONs may come
from scenes of different grids or CRSs. Sites smaller than min_area_ha (default 0.5 ha, as in
prediction: tailseg.constants.MIN_SITE_AREA_HA) are ignored, so specks that come and go with
the noise of the model or the pixel grid are not reported as changes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import mapping, shape
from shapely.validation import explain_validity

from tailseg.config import ChangeConfig
from tailseg.errors import OutputExistsError, VectorReadError
from tailseg.vectorize import geodesic_area_ha


def read_sites(path: str | Path) -> list[shapely.Geometry]:
    """The polygons of a tailings GeoJSON (as written by tailseg predict), in file order."""
    path = Path(path)
    if not path.is_file():
        raise VectorReadError(f"{path}: GeoJSON file not found")
    try:
        collection = json.loads(path.read_text())
        geometries = [shape(f["geometry"]) for f in collection["features"]]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise VectorReadError(f"{path}: not a GeoJSON FeatureCollection ({error!r}); pass the "
                              "<stem>_tailings.geojson written by `tailseg predict`") from error
    wrong = [g.geom_type for g in geometries if g.geom_type not in ("Polygon", "MultiPolygon")]
    if wrong:
        raise VectorReadError(f"{path}: {len(wrong)} features are not polygons ({wrong[0]})")
    # Overlaps and areas of an invalid polygon (a bow-tie, a ring crossing itself) are
    # undefined: GEOS stops with a TopologyException in the middle of the comparison.
    invalid = [index for index, geometry in enumerate(geometries) if not geometry.is_valid]
    if invalid:
        first = invalid[0]
        raise VectorReadError(
            f"{path}: {len(invalid)} invalid polygon(s); feature {first} (0-based, in file "
            f"order) is invalid: {explain_validity(geometries[first])}. Repair them (e.g. "
            "shapely.make_valid, or QGIS 'Fix geometries') or predict the scene again")
    return geometries


def _groups(before: list, after: list) -> list[tuple[list[int], list[int]]]:
    """Connected components of the overlap graph, as (before indices, after indices)."""
    parent = list(range(len(before) + len(after)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = shapely.STRtree(after)
    pairs = tree.query(np.asarray(before, dtype=object), predicate="intersects")
    for b, a in zip(*pairs, strict=True):
        if before[b].intersection(after[a]).area > 0:  # touching edges are not overlaps
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


def _large(sites: list, min_area_ha: float) -> list:
    """Sites below min_area_ha replaced by empty geometries, so the others keep their ids."""
    return [site if geodesic_area_ha(site) >= min_area_ha else shapely.Polygon()
            for site in sites]


def compare_sites(before: list, after: list, config: ChangeConfig | None = None) -> list[dict]:
    """GeoJSON features, one per group of overlapping sites, with status and areas in ha.

    The geometry is the union of the group's after-sites (the before-sites if it disappeared).
    """
    config = config or ChangeConfig()
    before, after = _large(before, config.min_area_ha), _large(after, config.min_area_ha)
    features = []
    for before_ids, after_ids in _groups(before, after):
        before_ids = [i for i in before_ids if not before[i].is_empty]
        after_ids = [i for i in after_ids if not after[i].is_empty]
        if not before_ids and not after_ids:
            continue  # a site below min_area_ha
        area_before = sum(geodesic_area_ha(before[i]) for i in before_ids)
        area_after = sum(geodesic_area_ha(after[i]) for i in after_ids)
        kept = [after[i] for i in after_ids] or [before[i] for i in before_ids]
        properties = {
            "status": _status(area_before, area_after, config),
            "area_before_ha": round(area_before, 4), "area_after_ha": round(area_after, 4),
            "area_change_ha": round(area_after - area_before, 4),
            "before_ids": [i + 1 for i in before_ids], "after_ids": [i + 1 for i in after_ids],
        }
        features.append({"type": "Feature", "properties": properties,
                         "geometry": mapping(shapely.union_all(kept))})
    features.sort(key=lambda f: -abs(f["properties"]["area_change_ha"]))
    for number, feature in enumerate(features, start=1):
        feature["id"] = feature["properties"]["id"] = number
    return features


def detect_change(before_path: str | Path, after_path: str | Path, out_path: str | Path,
                  config: ChangeConfig | None = None, overwrite: bool = False) -> dict:
    """Compare two tailings GeoJSONs and write the change GeoJSON; return a summary.

    Raises:
        OutputExistsError: out_path exists and overwrite is False.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise OutputExistsError(f"{out_path}: already exists; pass --overwrite to replace it")
    features = compare_sites(read_sites(before_path), read_sites(after_path), config)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staged = out_path.with_name(f".{out_path.name}.tmp")
    collection = {"type": "FeatureCollection", "features": features,
                  "properties": {"before": str(before_path), "after": str(after_path)}}
    staged.write_text(json.dumps(collection))
    staged.replace(out_path)
    counts = Counter(f["properties"]["status"] for f in features)
    return {"output": str(out_path), "counts": dict(counts),
            "area_change_ha": round(sum(f["properties"]["area_change_ha"] for f in features), 4)}
