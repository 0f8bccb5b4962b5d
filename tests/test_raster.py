"""The loader returns reflectance for each storage convention and names the file on error."""

import numpy as np
import pytest
from rasterio.crs import CRS

from tailseg.errors import (
    BandCountError,
    BandOrderError,
    DatasetValidationError,
    RasterReadError,
    ReflectanceConventionError,
)
from tailseg.raster import read_image, read_mask
from tests.rasters import default_transform, write_image, write_mask

RNG = np.random.default_rng(3)
REFLECTANCE = RNG.uniform(0.03, 0.49, (3, 12, 10)).astype(np.float32)


def test_float_reflectance_is_read_as_is_with_georeferencing(tmp_path):
    path = write_image(tmp_path / "f.tif", REFLECTANCE, "float32")
    raster = read_image(path)
    assert raster.data.shape == (12, 10, 3)
    np.testing.assert_array_equal(raster.data, np.moveaxis(REFLECTANCE, 0, -1))
    assert raster.crs == CRS.from_epsg(4326)
    assert raster.transform == default_transform()
    assert raster.valid.all()


@pytest.mark.parametrize(("convention", "offset"), [("dn", 0.0), ("dn_offset", 1000.0)])
def test_uint16_digital_numbers_follow_the_processing_baseline(tmp_path, convention, offset):
    dn = np.round(REFLECTANCE * 10000 + offset).astype(np.uint16)
    path = write_image(tmp_path / "dn.tif", dn, "uint16")
    raster = read_image(path, convention)
    np.testing.assert_allclose(raster.data, np.moveaxis(REFLECTANCE, 0, -1), atol=6e-5)


def test_uint16_without_convention_is_an_error_naming_the_file(tmp_path):
    path = write_image(tmp_path / "dn.tif", (REFLECTANCE * 10000).astype(np.uint16), "uint16")
    with pytest.raises(ReflectanceConventionError, match="dn.tif.*dn_offset"):
        read_image(path)


def test_scaled_uint8_applies_gdal_scale_and_offset(tmp_path):
    low = REFLECTANCE.min(axis=(1, 2))
    scale = (REFLECTANCE.max(axis=(1, 2)) - low) / 255
    dn = np.round((REFLECTANCE - low[:, None, None]) / scale[:, None, None])
    path = write_image(tmp_path / "u8.tif", dn, "uint8", scales=scale, offsets=low)
    raster = read_image(path)
    np.testing.assert_allclose(raster.data, np.moveaxis(REFLECTANCE, 0, -1),
                               atol=float(scale.max()) / 2 + 1e-6)


def test_nodata_pixels_become_nan_and_invalid(tmp_path):
    dn = np.round(REFLECTANCE * 10000).astype(np.uint16)
    dn[:, :2, :] = 0
    path = write_image(tmp_path / "nd.tif", dn, "uint16", nodata=0)
    raster = read_image(path, "dn")
    assert not raster.valid[:2].any() and raster.valid[2:].all()
    assert np.isnan(raster.data[:2]).all()


def test_wrong_band_count_and_order_are_named(tmp_path):
    four = write_image(tmp_path / "four.tif", RNG.uniform(0, 1, (4, 4, 4)), "float32",
                       descriptions=None)
    with pytest.raises(BandCountError, match="four.tif.*4 bands"):
        read_image(four)
    swapped = write_image(tmp_path / "rgb.tif", REFLECTANCE, "float32",
                          descriptions=("B4", "B3", "B2"))
    with pytest.raises(BandOrderError, match="rgb.tif"):
        read_image(swapped)


def test_unreadable_files_are_named(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(RasterReadError, match="empty.tif.*0 bytes"):
        read_image(empty)
    text = tmp_path / "text.tif"
    text.write_text("not a tiff")
    with pytest.raises(RasterReadError, match="text.tif.*not a readable GeoTIFF"):
        read_image(text)
    with pytest.raises(RasterReadError, match="missing.tif.*not found"):
        read_image(tmp_path / "missing.tif")


def test_truncated_file_is_named(tmp_path):
    path = write_image(tmp_path / "big.tif", RNG.uniform(0, 0.5, (3, 256, 256)), "float32")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RasterReadError, match="big.tif"):
        read_image(path)


def test_mask_is_read_as_uint8(tmp_path):
    mask = (RNG.uniform(size=(12, 10)) > 0.8).astype(np.uint8)
    raster = read_mask(write_mask(tmp_path / "m.tif", mask))
    np.testing.assert_array_equal(raster.data, mask)


@pytest.mark.parametrize("dtype, label, shown", [
    ("float32", 0.7, "0.7"),  # the cast to uint8 made it 0: IoU 0, "sites found 0/0"
    ("uint16", 256, "256"),  # 256 wraps to 0 in uint8
    ("int16", -1, "-1"),  # -1 wraps to 255, reported as "values [0 255]"
    ("float32", np.nan, "nan")])
def test_mask_values_other_than_0_and_1_are_refused_as_stored(tmp_path, dtype, label, shown):
    mask = np.zeros((12, 10), dtype)
    mask[2:5, 3:7] = label
    path = write_mask(tmp_path / "labels.tif", mask, dtype=dtype)
    with pytest.raises(DatasetValidationError, match=rf"labels\.tif: {dtype} mask .*\[{shown}\]"):
        read_mask(path)


def test_a_float_mask_of_0_and_1_is_read_as_uint8(tmp_path):
    mask = np.zeros((12, 10), np.float32)
    mask[1:4, 2:6] = 1.0
    raster = read_mask(write_mask(tmp_path / "m.tif", mask, dtype="float32"))
    assert raster.data.dtype == np.uint8
    np.testing.assert_array_equal(raster.data, mask.astype(np.uint8))
