"""Chips that share ground: the groups the split keeps together and the labels they share.

The bundled chips overlap (81 pairs, up to 85 % of a chip), each labelling one site: where two
overlap, the site one labels is background in the other. These tests build such chips on known
grids, and check the bundled data: no test or validation chip shares ground with a training
chip, and a chip's merged mask holds its neighbour's site.
"""

from __future__ import annotations

import numpy as np
import pytest

from tailseg.config import DataConfig, RunConfig
from tailseg.crossval import assign_folds, fold_split
from tailseg.dataset import find_pairs, load_chips
from tailseg.overlaps import (
    NOT_COVERED,
    apply_overlaps,
    merge_labels,
    overlap_groups,
    overlapping_pairs,
    read_footprints,
    resample_mask,
)
from tailseg.split import split_ids
from tests.rasters import ORIGIN, PIXEL_DEG, default_transform, write_image, write_mask

SIZE = 40


def _chip(root, name: str, column: int, row: int = 0, site=None, crs: str = "EPSG:4326",
          transform=None):
    """A chip whose top-left pixel is (column, row) pixels from ORIGIN on one shared grid, with
    its site (top, left, height, width) in its own pixel coordinates labelled 1."""
    transform = transform or default_transform(
        origin=(ORIGIN[0] + column * PIXEL_DEG, ORIGIN[1] - row * PIXEL_DEG))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if site:
        top, left, height, width = site
        mask[top:top + height, left:left + width] = 1
    image = np.full((3, SIZE, SIZE), 0.1, np.float32)
    write_image(root / "images" / f"{name}.tif", image, "float32", crs=crs, transform=transform)
    write_mask(root / "masks" / f"{name}.tif", mask, crs=crs, transform=transform)
    return mask


@pytest.fixture
def overlapping(tmp_path):
    """a and b share 20 of a's 40 columns, each labels its own site in the shared strip;
    c touches b edge to edge (shares no ground); d stands alone."""
    _chip(tmp_path, "a", 0, site=(5, 25, 10, 10))  # a's columns 25-34 = b's 5-14
    _chip(tmp_path, "b", 20, site=(20, 0, 10, 10))  # b's columns 0-9 = a's 20-29
    _chip(tmp_path, "c", 60, site=(0, 0, 3, 3))
    _chip(tmp_path, "d", 500)
    pairs, _ = find_pairs(tmp_path)
    return tmp_path, pairs


def test_only_chips_sharing_ground_overlap_and_groups_follow_chains(overlapping, tmp_path):
    _, pairs = overlapping
    footprints = read_footprints(pairs)
    assert overlapping_pairs(footprints) == [("a", "b")]  # c only touches b
    assert overlap_groups(footprints) == {"a": "a", "b": "a", "c": "c", "d": "d"}
    _chip(tmp_path, "e", 79, site=None)  # shares one column with c, none with b
    _chip(tmp_path, "f", 59)  # shares 1 column with b and 39 with c: links the chain
    footprints = read_footprints(find_pairs(tmp_path)[0])
    groups = overlap_groups(footprints)
    assert {chip for chip, key in groups.items() if key == "a"} == {"a", "b", "c", "e", "f"}
    assert groups["d"] == "d"


def test_a_chip_on_another_grid_is_left_out_of_the_footprints(tmp_path):
    _chip(tmp_path, "a", 0)
    write_image(tmp_path / "images" / "t.tif", np.full((3, 4, SIZE), 0.1, np.float32),
                "float32", transform=default_transform())  # a truncated image, as chip_023
    write_mask(tmp_path / "masks" / "t.tif", np.ones((SIZE, SIZE), np.uint8),
               transform=default_transform())
    assert sorted(read_footprints(find_pairs(tmp_path)[0])) == ["a"]


def test_merged_labels_hold_the_neighbours_site_on_the_chips_own_grid(overlapping):
    _, pairs = overlapping
    chips, _ = load_chips(pairs)
    masks = {pair.chip_id: pair.mask for pair in pairs}
    merged = {chip.chip_id: chip for chip in merge_labels(chips, read_footprints(pairs), masks)}
    own = {chip.chip_id: chip.mask for chip in chips}
    expected_a = own["a"].copy()
    expected_a[20:30, 20:30] = 1  # b's site, 20 columns to the right of b's origin
    np.testing.assert_array_equal(merged["a"].mask, expected_a)
    expected_b = own["b"].copy()
    expected_b[5:15, 5:15] = 1  # a's site seen from b
    np.testing.assert_array_equal(merged["b"].mask, expected_b)
    for alone in ("c", "d"):
        assert merged[alone] is next(chip for chip in chips if chip.chip_id == alone)


def test_resampling_reports_where_the_source_does_not_reach(overlapping):
    _, pairs = overlapping
    footprints = read_footprints(pairs)
    stored = np.ones((SIZE, SIZE), np.uint8)
    on_a = resample_mask(stored, footprints["b"], footprints["a"])
    assert (on_a[:, 20:] == 1).all() and (on_a[:, :20] == NOT_COVERED).all()


def test_a_neighbour_in_another_crs_is_merged_where_it_lies(tmp_path):
    # b as a UTM chip over a's eastern half: its site must land on a's grid by position.
    from rasterio.transform import from_origin
    from rasterio.warp import transform as reproject_points

    _chip(tmp_path, "a", 0)
    xs, ys = reproject_points("EPSG:4326", "EPSG:32723", [ORIGIN[0] + 20 * PIXEL_DEG],
                              [ORIGIN[1]])
    _chip(tmp_path, "b", 0, site=(10, 10, 10, 10), crs="EPSG:32723",
          transform=from_origin(xs[0], ys[0], 10.0, 10.0))
    pairs, _ = find_pairs(tmp_path)
    merged, groups = apply_overlaps(load_chips(pairs)[0], pairs, "merge")
    assert groups == {"a": "a", "b": "a"}
    a = next(chip for chip in merged if chip.chip_id == "a").mask
    rows, columns = np.nonzero(a)
    assert 60 < rows.size < 160  # about 100 pixels of 9.4 m for 100 of 10 m
    assert 28 <= columns.min() <= 32 and 8 <= rows.min() <= 12


def test_ignore_changes_nothing_and_group_merges_nothing(overlapping):
    _, pairs = overlapping
    chips, _ = load_chips(pairs)
    assert apply_overlaps(chips, pairs, "ignore") == (chips, {})
    same, groups = apply_overlaps(chips, pairs, "group")
    assert same == chips and groups["b"] == "a"


def test_folds_and_validation_keep_groups_whole():
    ids = [f"chip_{i:03d}" for i in range(60)]
    groups = {chip_id: "chip_000" for chip_id in ids[:7]} | \
        {chip_id: "chip_010" for chip_id in ids[10:14]}
    fold_of = assign_folds(ids, 5, 42, groups)
    assert len({fold_of[c] for c in ids[:7]}) == 1 and len({fold_of[c] for c in ids[10:14]}) == 1
    sizes = [list(fold_of.values()).count(fold) for fold in range(5)]
    assert max(sizes) - min(sizes) <= 7  # at most one group's size apart
    for fold in range(5):
        split = fold_split(fold_of, fold, 0.15, 42, groups)
        for members in (ids[:7], ids[10:14]):
            assert len({part for part in split for c in members if c in split[part]}) == 1
    # Without groups the rule is the plain one: every folds-th chip of the hash order.
    plain = assign_folds(ids, 5, 42)
    assert sorted(list(plain.values()).count(f) for f in range(5)) == [12] * 5


def test_no_held_out_chip_of_the_bundled_data_shares_ground_with_a_training_chip(
        bundled_data):
    pairs, _ = find_pairs(bundled_data)
    footprints = read_footprints(pairs)
    ids = sorted(footprints)
    groups = overlap_groups(footprints)
    config = DataConfig()
    part = {c: p for p, members in split_ids(ids, config, groups=groups).items()
            for c in members}
    crossing = [(a, b) for a, b in overlapping_pairs(footprints) if part[a] != part[b]]
    assert crossing == []
    leaky = {c: p for p, members in split_ids(ids, config).items() for c in members}
    assert sum(leaky[a] != leaky[b] for a, b in overlapping_pairs(footprints)) > 20
    assert RunConfig().data.overlaps == "merge"  # the default


def test_bundled_chips_get_their_neighbours_sites(bundled_data):
    # chip_007 and chip_066 share 85 % of their ground; each labels a different site.
    pairs = [p for p in find_pairs(bundled_data)[0] if p.chip_id in ("chip_007", "chip_066")]
    chips, _ = load_chips(pairs)
    merged, _ = apply_overlaps(chips, pairs, "merge")
    for before, after in zip(chips, merged, strict=True):
        assert after.mask.sum() > before.mask.sum()
        assert (after.mask >= before.mask).all()  # labels are only added


def test_a_neighbour_whose_mask_is_not_0_and_1_gives_no_labels(overlapping, caplog):
    # A quarantined chip (here: b's mask holds a 2) must not stop the others' loading.
    root, pairs = overlapping
    chips, _ = load_chips([pair for pair in pairs if pair.chip_id == "a"])
    write_mask(root / "masks" / "b.tif", np.full((SIZE, SIZE), 2, np.uint8),
               transform=default_transform(origin=(ORIGIN[0] + 20 * PIXEL_DEG, ORIGIN[1])))
    merged, _ = apply_overlaps(chips, pairs, "merge")
    np.testing.assert_array_equal(merged[0].mask, chips[0].mask)
    assert "not merging the labels of b" in caplog.text


def test_a_chip_whose_files_do_not_open_is_left_out_of_the_footprints(overlapping, caplog):
    root, pairs = overlapping
    (root / "masks" / "c.tif").write_bytes(b"")  # an empty file, quarantined by validation
    assert sorted(read_footprints(pairs)) == ["a", "b", "d"]
    assert "chip c has no readable footprint" in caplog.text


def test_evaluate_scores_against_the_merged_labels_unless_told_to_ignore_them(overlapping):
    # The tiny model marks bright pixels; a's and b's images are bright on both sites, so each
    # map holds its neighbour's site: a hit under the merged labels, a false site as stored.
    import json

    from tailseg.cli import main
    from tests.test_cli_inputs import write_tiny_onnx

    root, pairs = overlapping
    merged = {chip.chip_id: chip.mask
              for chip in apply_overlaps(load_chips(pairs)[0], pairs, "merge")[0]}
    for name in ("a", "b"):
        transform = read_footprints(pairs)[name].transform
        image = np.where(merged[name] == 1, 0.3, 0.05).astype(np.float32)
        write_image(root / "images" / f"{name}.tif", np.stack([image] * 3), "float32",
                    transform=transform)
    model = write_tiny_onnx(root.parent / "model" / "1" / "model.onnx")
    reports = {}
    for mode in ("merge", "ignore"):
        out = root.parent / f"{mode}.json"
        assert main(["evaluate", "--model", str(model), "--data", str(root), "--overlaps", mode,
                     "--json", str(out)]) == 0
        reports[mode] = json.loads(out.read_text())
    # 400 predicted pixels; c's 3 x 3 site is missed either way.
    assert reports["merge"]["iou"] == pytest.approx(400 / 409)
    assert reports["ignore"]["iou"] == pytest.approx(200 / 409)
    assert reports["merge"]["overlaps"] == "merge"
    # Without --overlaps: as the model was trained (its metadata), merge when it does not say.
    for trained, expected in (("group", 200 / 409), ("ignore", 200 / 409), ("merge", 400 / 409),
                              (None, 400 / 409)):
        metadata = {"threshold": 0.5} | ({"overlaps": trained} if trained else {})
        model = write_tiny_onnx(root.parent / f"model_{trained}" / "1" / "model.onnx", metadata)
        out = root.parent / f"default_{trained}.json"
        assert main(["evaluate", "--model", str(model), "--data", str(root), "--json",
                     str(out)]) == 0
        assert json.loads(out.read_text())["iou"] == pytest.approx(expected), trained


def test_a_chip_without_a_crs_is_left_out_of_the_overlaps_by_name(overlapping, caplog):
    root, pairs = overlapping
    write_mask(root / "masks" / "d.tif", np.zeros((SIZE, SIZE), np.uint8), crs=None)
    with caplog.at_level("WARNING"):
        assert sorted(read_footprints(pairs)) == ["a", "b", "c"]
    assert "chip d has no CRS" in caplog.text and "d.tif" in caplog.text
