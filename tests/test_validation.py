"""Dataset validation: each defect of a chip is caught, named and quarantined; dataset-level
checks stop the run; the bundled data passes except chip_023."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.shutil
from pydantic import ValidationError

from tailseg.cli import main
from tailseg.errors import DatasetNotFoundError, DatasetValidationError
from tailseg.validation import (
    ValidationConfig,
    raise_if_unusable,
    validate_dataset,
    write_reports,
)
from tailseg.validation.facts import gather_facts
from tailseg.validation.suite import CHIP_SUITE, DATASET_SUITE, load_suite
from tests.rasters import default_transform, make_dataset, write_image, write_mask

# Small synthetic datasets: 6 chips of 64 x 64; one broken chip is a 17 % share.
CONFIG = ValidationConfig(min_valid_chips=3, max_quarantined_share=0.5)
BROKEN = "chip_001"


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def bundled_result(bundled_data):
    before = tree_state(bundled_data)
    result = validate_dataset(bundled_data, ValidationConfig())
    # Guards against a validator that writes sidecars (.aux.xml) or touches the data.
    assert tree_state(bundled_data) == before
    return result


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", n_chips=6, size=64, seed=3)


def _rewrite_image(root: Path, array: np.ndarray, **kwargs) -> None:
    path = root / "images" / f"{BROKEN}.tif"
    with rasterio.open(path) as src:
        transform = src.transform
    path.unlink()
    write_image(path, array, transform=transform, **kwargs)


def _rewrite_mask(root: Path, mask: np.ndarray | None = None, **kwargs) -> None:
    path = root / "masks" / f"{BROKEN}.tif"
    with rasterio.open(path) as src:
        kwargs.setdefault("transform", src.transform)
        mask = src.read(1) if mask is None else mask
    path.unlink()
    write_mask(path, mask, **kwargs)


def _truncate(root: Path) -> None:
    """A cloud-optimised copy (header first) cut in half: opens, but its tiles are missing."""
    path = root / "images" / f"{BROKEN}.tif"
    cog = path.with_suffix(".cog")
    rasterio.shutil.copy(path, cog, driver="COG", compress="deflate", blocksize=32)
    data = cog.read_bytes()
    cog.unlink()
    path.write_bytes(data[: len(data) // 2])


def _shifted(root: Path) -> None:
    with rasterio.open(root / "masks" / f"{BROKEN}.tif") as src:
        transform = src.transform
    _rewrite_mask(root, transform=transform * rasterio.Affine.translation(3, 0))


def _nodata_holes(root: Path) -> None:
    dn = np.full((3, 64, 64), 100, np.uint8)
    dn[:, :10] = 0
    _rewrite_image(root, dn, dtype="uint8", scales=[0.001] * 3, offsets=[0.0] * 3, nodata=0)


def _projected(root: Path) -> None:
    """Image and mask both in UTM 23S with 10 m pixels: not the configured CRS or pixel size."""
    transform = rasterio.transform.from_origin(600000, 7770000, 10, 10)
    with rasterio.open(root / "images" / f"{BROKEN}.tif") as src:
        _rewrite_image(root, src.read(), dtype="uint8", scales=src.scales, offsets=src.offsets)
    for folder in ("images", "masks"):
        path = root / folder / f"{BROKEN}.tif"
        with rasterio.open(path, "r+") as dst:
            dst.crs, dst.transform = "EPSG:32723", transform


REFLECTANCE = np.full((3, 64, 64), 0.1, np.float32)
DEFECTS = {
    # name: (how to break chip_001, the checks that must name it)
    "truncated image": (_truncate, {"image_readable"}),
    "mask CRS differs": (lambda r: _rewrite_mask(r, crs="EPSG:32723"), {"crs_match"}),
    "mask transform shifted": (_shifted, {"transform_match"}),
    "missing mask": (lambda r: (r / "masks" / f"{BROKEN}.tif").unlink(), {"mask_present"}),
    "missing image": (lambda r: (r / "images" / f"{BROKEN}.tif").unlink(), {"image_present"}),
    "4-band image": (lambda r: _rewrite_image(r, np.full((4, 64, 64), 0.1), descriptions=(
        "B2", "B3", "B4", "B8")), {"image_band_count"}),
    "bands in RGB order": (lambda r: _rewrite_image(r, REFLECTANCE, descriptions=(
        "B4", "B3", "B2")), {"image_band_order"}),
    "NaN values": (lambda r: _rewrite_image(r, np.where(np.eye(64, dtype=bool), np.nan,
                                                        REFLECTANCE)), {"finite_values"}),
    "out-of-range values": (lambda r: _rewrite_image(r, REFLECTANCE * 25),
                            {"reflectance_range"}),
    "integers without scale": (lambda r: _rewrite_image(r, np.full((3, 64, 64), 900),
                                                        dtype="uint16"),
                               {"reflectance_convention"}),
    "nodata holes": (_nodata_holes, {"nodata_fraction"}),
    "non-binary mask": (lambda r: _rewrite_mask(r, np.tile([0, 1, 2, 1], (64, 16)).astype(
        np.uint8)), {"mask_binary"}),
    # Values that a cast to uint8 would hide (0.7 and 256 -> 0) or disguise (-1 -> 255).
    "float mask of 0.7": (lambda r: _rewrite_mask(r, np.tile([0, 0.7], (64, 32)).astype(
        np.float32), dtype="float32"), {"mask_binary"}),
    "uint16 mask of 256": (lambda r: _rewrite_mask(r, np.tile([0, 256], (64, 32)).astype(
        np.uint16), dtype="uint16"), {"mask_binary"}),
    "int16 mask of -1": (lambda r: _rewrite_mask(r, np.tile([0, -1], (64, 32)).astype(
        np.int16), dtype="int16"), {"mask_binary"}),
    "empty mask": (lambda r: _rewrite_mask(r, np.zeros((64, 64), np.uint8)),
                   {"tailings_fraction"}),
    "2-band mask": (lambda r: write_image(r / "masks" / f"{BROKEN}.tif", np.zeros(
        (2, 64, 64)), "uint8", transform=default_transform(), descriptions=None),
                    {"mask_band_count"}),
    "image not a GeoTIFF": (lambda r: (r / "images" / f"{BROKEN}.tif").write_text(
        "chip_001 exported as text by mistake\n"), {"image_readable"}),
    "zero-byte mask": (lambda r: (r / "masks" / f"{BROKEN}.tif").write_bytes(b""),
                       {"mask_readable"}),
    "image in UTM": (_projected, {"crs_allowed", "pixel_size"}),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_chip_defect_is_quarantined_and_named(dataset, defect):
    breaker, expected_checks = DEFECTS[defect]
    breaker(dataset)
    result = validate_dataset(dataset, CONFIG)
    assert list(result.quarantined) == [BROKEN]
    reasons = result.quarantined[BROKEN]
    assert expected_checks <= {r["check"] for r in reasons}
    assert all(r["message"] and "{" not in r["message"] for r in reasons), reasons
    assert result.usable and result.dataset_failures == []
    assert BROKEN not in result.valid_ids and len(result.valid_ids) == 5
    entry = result.report["quarantined"][0]
    assert entry["chip_id"] == BROKEN and expected_checks <= set(entry["checks"])


def test_expected_crs_none_accepts_any_crs_and_a_list_still_binds(dataset):
    """None drops the crs_allowed check (other checks stay: the UTM chip's metre pixels still
    fail pixel_size); a list that names the UTM zone accepts it."""
    _projected(dataset)
    anywhere = validate_dataset(dataset, CONFIG.model_copy(update={"expected_crs": None}))
    assert {r["check"] for r in anywhere.quarantined[BROKEN]} == {"pixel_size"}
    assert len(anywhere.valid_ids) == 5
    metres = {"pixel_size_min": 5.0, "pixel_size_max": 20.0}
    utm_only = validate_dataset(dataset, CONFIG.model_copy(
        update={"expected_crs": ["EPSG:32723"], **metres}))
    assert utm_only.valid_ids == [BROKEN]
    assert all({r["check"] for r in reasons} == {"crs_allowed", "pixel_size"}
               for reasons in utm_only.quarantined.values())
    both = validate_dataset(dataset, CONFIG.model_copy(update={"expected_crs": None, **metres}))
    assert both.valid_ids == [BROKEN]


def test_messages_name_the_problem(dataset):
    (dataset / "masks" / f"{BROKEN}.tif").write_bytes(b"")
    _rewrite_image(dataset, REFLECTANCE * 25)
    reasons = validate_dataset(dataset, CONFIG).quarantined[BROKEN]
    text = " ".join(r["message"] for r in reasons)
    assert "empty (0 bytes)" in text and f"{BROKEN}.tif" in text
    assert "highest reflectance 2.5 is above 1.6" in text


def test_a_valid_dataset_passes_every_check(dataset):
    result = validate_dataset(dataset, CONFIG)
    assert result.usable and result.quarantined == {} and result.warnings == []
    assert result.valid_ids == [f"chip_{i:03d}" for i in range(6)]
    assert result.report["gx"]["chips"]["success"] and result.report["gx"]["dataset"]["success"]
    assert set(result.band_stats["bands"]) == {"B2", "B3", "B4"}
    raise_if_unusable(result)  # does not raise


def test_duplicated_chip_stops_the_run_naming_both(dataset):
    for folder in ("images", "masks"):
        shutil.copy(dataset / folder / f"{BROKEN}.tif", dataset / folder / "chip_copy.tif")
    result = validate_dataset(dataset, CONFIG)
    assert not result.usable and result.quarantined == {}
    [failure] = result.dataset_failures
    assert failure["check"] == "duplicate_images"
    assert sorted(failure["chip_ids"]) == [BROKEN, "chip_copy"]
    with pytest.raises(DatasetValidationError, match="duplicate_images.*chip_001, chip_copy"):
        raise_if_unusable(result)


def test_too_many_quarantined_chips_stop_the_run(dataset):
    for chip in ("chip_002", "chip_004"):
        (dataset / "masks" / f"{chip}.tif").unlink()
    result = validate_dataset(dataset, CONFIG.model_copy(update={"max_quarantined_share": 0.2}))
    assert not result.usable
    assert [f["check"] for f in result.dataset_failures] == ["quarantined_share"]
    with pytest.raises(DatasetValidationError) as caught:
        raise_if_unusable(result)
    message = str(caught.value)
    for chip in ("chip_002", "chip_004"):
        assert f"chip {chip} quarantined (mask_present)" in message


def test_dataset_level_bounds(dataset):
    config = CONFIG.model_copy(update={"min_valid_chips": 7, "class_balance_min": 0.3})
    result = validate_dataset(dataset, config)
    checks = {f["check"]: f["message"] for f in result.dataset_failures}
    assert set(checks) == {"valid_chip_count", "class_balance"}
    assert checks["valid_chip_count"] == "only 6 valid chips, at least 7 needed"


def test_band_drift_is_a_warning_against_the_previous_run(dataset, tmp_path):
    first = validate_dataset(dataset, CONFIG)
    same = validate_dataset(dataset, CONFIG, previous_stats=first.band_stats)
    assert same.warnings == [] and same.report["gx"]["dataset"]["statistics"][
        "evaluated_expectations"] == 9
    brighter = make_dataset(tmp_path / "brighter", n_chips=6, size=64, seed=3)
    for path in (brighter / "images").iterdir():
        with rasterio.open(path, "r+") as dst:
            dst.offsets = tuple(o + 0.05 for o in dst.offsets)
    drifted = validate_dataset(brighter, CONFIG, previous_stats=first.band_stats)
    assert drifted.usable
    messages = [w["message"] for w in drifted.warnings if w["check"] == "band_drift"]
    assert len(messages) == 3 and messages[0].startswith("B2 mean reflectance")


def test_malformed_previous_stats_are_rejected(dataset):
    with pytest.raises(ValueError, match="bands.B2.mean"):
        validate_dataset(dataset, CONFIG, previous_stats={"bands": {"B2": {}}})


def test_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetNotFoundError, match="masks: folder not found"):
        validate_dataset(tmp_path, CONFIG)


def test_config_is_strict():
    with pytest.raises(ValidationError, match="extra"):
        ValidationConfig(min_valid_chip=3)
    with pytest.raises(ValidationError, match="chip_size_min"):
        ValidationConfig(chip_size_min=500, chip_size_max=100)
    # The chip loader rejects any nodata pixel: a tolerance would pass chips training refuses.
    with pytest.raises(ValidationError, match="max_nodata_fraction"):
        ValidationConfig(max_nodata_fraction=0.1)


def test_suites_are_curated_files_with_a_version_and_messages():
    for filename, name in ((CHIP_SUITE, "tailseg_chips"), (DATASET_SUITE, "tailseg_dataset")):
        suite = load_suite(filename)
        assert suite["name"] == name and filename.endswith(f".v{suite['meta']['version']}.json")
        assert all(e["meta"]["risk"] for e in suite["expectations"])


def test_a_suite_expectation_requiring_an_unknown_parameter_is_refused(tmp_path):
    # meta.requires drops an expectation when its parameter is absent: a misspelt name would
    # drop it always, so reading the suite refuses it.
    import copy

    from tailseg.validation.suite import read_suite

    suite = copy.deepcopy(load_suite(CHIP_SUITE))
    required = [e["meta"]["requires"] for e in suite["expectations"] if "requires" in e["meta"]]
    assert "expected_crs" in required
    path = tmp_path / CHIP_SUITE
    path.write_text(json.dumps(suite))
    assert read_suite(path) == suite
    suite["expectations"][0]["meta"]["requires"] = "expected_cr"
    path.write_text(json.dumps(suite))
    with pytest.raises(ValueError, match="expectation 0 requires 'expected_cr', not one of"):
        read_suite(path)


def test_bundled_data_quarantines_only_chip_023(bundled_result):
    result = bundled_result
    assert result.usable and list(result.quarantined) == ["chip_023"]
    assert len(result.valid_ids) == 99 and "chip_023" not in result.valid_ids
    shape = next(r for r in result.quarantined["chip_023"] if r["check"] == "shape_match")
    assert shape["message"].startswith("image is 48 x 448 pixels but its mask is 448 x 448")
    assert json.loads(json.dumps(result.report))["n_quarantined"] == 1
    assert "tailseg_chips.v1" in result.html and "chip_023" in result.html
    assert "values must belong to this set" in result.html  # rendered by GX's Data Docs view


def test_reports_are_written_whole(bundled_result, tmp_path):
    write_reports(bundled_result, tmp_path / "out" / "report.json", tmp_path / "out" / "r.html")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.html", "report.json"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["quarantined"][0]["chip_id"] == "chip_023"
    assert (tmp_path / "out" / "r.html").read_text() == bundled_result.html


def test_cli_exit_codes_and_report(dataset, tmp_path, capsys):
    settings = tmp_path / "validation.yaml"
    settings.write_text("validation:\n  min_valid_chips: 3\n  max_quarantined_share: 0.5\n")
    out = tmp_path / "report.json"
    (dataset / "masks" / f"{BROKEN}.tif").write_bytes(b"")
    argv = ["validate", str(dataset), "--report", str(out), "--config", str(settings)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["quarantined"][0]["chip_id"] == BROKEN
    assert report["quarantined"][0]["failures"][0]["check"] == "mask_readable"
    # A report is never replaced unasked (the same run again is refused, exit 2) ...
    assert main([*argv, "--html", str(tmp_path / "docs.html")]) == 2
    assert "report.json: already exists; pass --overwrite" in capsys.readouterr().err
    assert not (tmp_path / "docs.html").exists()
    argv.append("--overwrite")  # ... but on request
    assert main([*argv, "--html", str(tmp_path / "docs.html")]) == 0
    settings.write_text("validation:\n  min_valid_chips: 6\n")
    assert main(argv) == 1
    assert "valid_chip_count" in capsys.readouterr().err
    assert json.loads(out.read_text())["usable"] is False


@pytest.mark.parametrize("target", ["masks/chip_000.tif", "images/new.json", "."])
def test_cli_never_writes_a_report_into_the_dataset(dataset, target, capsys):
    before = tree_state(dataset)
    assert main(["validate", str(dataset), "--report", str(dataset / target),
                 "--overwrite"]) == 2
    assert "lies inside the dataset" in capsys.readouterr().err
    assert tree_state(dataset) == before


@pytest.mark.parametrize("content, kind", [("[1, 2]", "list"), ('"B2"', "str")])
def test_cli_previous_stats_must_be_an_object(dataset, tmp_path, content, kind, capsys):
    stats = tmp_path / "stats.json"
    stats.write_text(content)
    assert main(["validate", str(dataset), "--report", str(tmp_path / "r.json"),
                 "--previous-stats", str(stats)]) == 2
    error = capsys.readouterr().err
    assert "stats.json: expected a JSON object" in error and f"got {kind}" in error
    assert not (tmp_path / "r.json").exists()


def test_oversized_chip_is_rejected_from_metadata_alone(dataset):
    _rewrite_image(dataset, np.full((3, 128, 128), 0.1, np.float32))
    _rewrite_mask(dataset, np.ones((128, 128), np.uint8))
    config = CONFIG.model_copy(update={"chip_size_max": 100})
    result = validate_dataset(dataset, config)
    assert {r["check"] for r in result.quarantined[BROKEN]} == {"chip_size"}
    facts = gather_facts(dataset, max_side=100).set_index("chip_id")
    assert facts.loc[BROKEN, "image_width"] == 128
    assert pd.isna(facts.loc[BROKEN, "image_hash"]) and pd.isna(facts.loc[BROKEN,
                                                                          "tailings_fraction"])
    assert not pd.isna(facts.loc["chip_000", "image_hash"])


def test_chips_that_share_ground_are_a_warning_naming_their_groups(dataset):
    for folder in ("images", "masks"):  # chip_006: chip_000's grid shifted by 10 pixels
        with rasterio.open(dataset / folder / "chip_000.tif") as source:
            profile, data = source.profile, source.read()
            profile["transform"] = source.transform * rasterio.Affine.translation(10, 10)
            scales, offsets = source.scales, source.offsets
        with rasterio.open(dataset / folder / "chip_006.tif", "w", **profile) as copy:
            copy.write(data if folder == "masks" else data[:, ::-1])  # not a duplicate image
            copy.scales, copy.offsets = scales, offsets
    result = validate_dataset(dataset, CONFIG)
    assert result.usable
    [warning] = [w for w in result.warnings if w["check"] == "chips_overlap"]
    assert warning["chip_ids"] == ["chip_000", "chip_006"]
    assert "2 chips in 1 groups share ground" in warning["message"]
    assert result.report["overlap_groups"] == {"chip_000": ["chip_000", "chip_006"]}
