"""Per-chip facts gathered with rasterio: one row per chip id, the table the suites check.

Each fact is None when it cannot be known (no file, unreadable file), so that only the root cause
of a broken chip is reported: GX column expectations skip missing values.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from rasterio.errors import RasterioIOError

from tailseg.constants import BANDS, IMAGE_DIR, MASK_DIR, RASTER_SUFFIXES, TAILINGS, Convention
from tailseg.errors import (
    BandCountError,
    BandOrderError,
    DatasetNotFoundError,
    RasterReadError,
    ReflectanceConventionError,
)
from tailseg.raster import check_band_order, open_raster, to_reflectance

BAND_COLUMNS: tuple[str, ...] = tuple(f"{b.lower()}_{s}" for b in BANDS for s in ("mean", "std"))


def list_chips(data_dir: str | Path) -> dict[str, tuple[Path | None, Path | None]]:
    """{chip id: (image path or None, mask path or None)} for every raster in images/ and masks/.

    Raises:
        DatasetNotFoundError: data_dir, images/ or masks/ does not exist.
    """
    data_dir = Path(data_dir)
    found: list[dict[str, Path]] = []
    for name in (IMAGE_DIR, MASK_DIR):
        folder = data_dir / name
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"{folder}: folder not found; a dataset holds {IMAGE_DIR}/<id>.tif and "
                f"{MASK_DIR}/<id>.tif paired by file name")
        found.append({p.stem: p for p in sorted(folder.iterdir())
                      if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES})
    images, masks = found
    return {chip_id: (images.get(chip_id), masks.get(chip_id))
            for chip_id in sorted(images.keys() | masks.keys())}


def _georef(dataset, prefix: str) -> dict:
    crs = dataset.crs.to_string() if dataset.crs else "none"
    transform = dataset.transform
    return {f"{prefix}_width": dataset.width, f"{prefix}_height": dataset.height,
            f"{prefix}_bands": dataset.count, f"{prefix}_crs": crs,
            f"{prefix}_transform": tuple(transform)[:6]}


def _unreadable(path: Path, error: Exception) -> RasterReadError:
    detail = error.__cause__ or error  # GDAL's own words are in the cause, when there is one
    return RasterReadError(f"{path}: pixels cannot be read, the file is probably truncated "
                           f"({detail}); re-export it")


def _band_order_ok(dataset, path: Path) -> bool | None:
    """True/False when the bands are described, None when they carry no descriptions."""
    if dataset.count != len(BANDS) or not any(dataset.descriptions):
        return None
    try:
        check_band_order(dataset, path)
    except (BandCountError, BandOrderError):
        return False
    return True


def image_facts(path: Path, convention: Convention, max_side: int | None = None) -> dict:
    """Metadata, content hash and radiometric summary of one image.

    Pixels are read in full (chips are small: the 100 bundled images take about 0.4 s), except
    when the metadata alone already rejects the image: wider or higher than max_side.

    Raises:
        RasterReadError: the file is empty, not a GeoTIFF, or its pixels cannot be read.
    """
    with open_raster(path) as dataset:
        facts = _georef(dataset, "image")
        facts |= {"image_dtype": dataset.dtypes[0],
                  "image_descriptions": str(dataset.descriptions),
                  "band_order_ok": _band_order_ok(dataset, path),
                  "pixel_size_x": abs(dataset.transform.a),
                  "pixel_size_y": abs(dataset.transform.e)}
        if max_side and max(dataset.width, dataset.height) > max_side:
            return facts
        try:
            raw = dataset.read()
            nodata = np.any(dataset.read_masks() == 0, axis=0)
        except RasterioIOError as error:
            raise _unreadable(path, error) from error
        scales, offsets = dataset.scales, dataset.offsets
    digest = hashlib.sha256(f"{raw.dtype}{raw.shape}".encode() + raw.tobytes()).hexdigest()
    facts |= {"image_hash": digest, "nodata_fraction": float(nodata.mean())}
    try:
        return facts | _radiometry(raw, nodata, scales, offsets, convention, path)
    except ReflectanceConventionError as error:
        return facts | {"reflectance_error": str(error)}


def _radiometry(raw: np.ndarray, nodata: np.ndarray, scales, offsets, convention: Convention,
                path: Path) -> dict:
    """Non-finite count, reflectance range and per-band mean/std over the non-nodata pixels.

    Unsigned integers of up to 16 bits go through per-band histograms of the raw values: exact,
    and several times faster than converting every pixel to float, since every convention is
    linear in the raw value (reflectance = raw * gain + bias per band).
    """
    if raw.dtype.kind != "u" or raw.dtype.itemsize > 2:
        return _float_radiometry(raw, nodata, scales, offsets, convention, path)
    probe = np.stack([np.zeros_like(raw[:, :1, :1]), np.ones_like(raw[:, :1, :1])], axis=-1)
    bias, one = to_reflectance(probe[..., 0], str(raw.dtype), scales, offsets, convention, path),\
        to_reflectance(probe[..., 1], str(raw.dtype), scales, offsets, convention, path)
    gain, bias = (one - bias).astype(np.float64).ravel(), bias.astype(np.float64).ravel()
    pixels = raw.reshape(len(raw), -1)[:, ~nodata.ravel()] if nodata.any() else raw.reshape(
        len(raw), -1)
    if not (np.isfinite(gain).all() and np.isfinite(bias).all()):
        return {"nonfinite_count": int(pixels.size)}
    facts: dict = {"nonfinite_count": 0}
    if not pixels.shape[1]:
        return facts
    lows, highs, means, stds = [], [], [], []
    for band, (g, b) in enumerate(zip(gain, bias, strict=True)):
        histogram = np.bincount(pixels[band], minlength=1).astype(np.float64)
        values = np.arange(len(histogram), dtype=np.float64)
        present = np.flatnonzero(histogram)
        mean = (histogram @ values) / histogram.sum()
        variance = max((histogram @ (values - mean) ** 2) / histogram.sum(), 0.0)
        ends = (values[present[0]] * g + b, values[present[-1]] * g + b)
        lows.append(min(ends))
        highs.append(max(ends))
        means.append(mean * g + b)
        stds.append(np.sqrt(variance) * abs(g))
    return facts | _summary(lows, highs, means, stds)


def _float_radiometry(raw, nodata, scales, offsets, convention, path) -> dict:
    reflectance = to_reflectance(raw, str(raw.dtype), scales, offsets, convention, path)
    values = reflectance.reshape(len(raw), -1)
    if nodata.any():
        values = values[:, ~nodata.ravel()]
    finite = np.isfinite(values)
    facts: dict = {"nonfinite_count": int(finite.size - np.count_nonzero(finite))}
    good = values[:, finite.all(axis=0)] if facts["nonfinite_count"] else values
    if not good.size:
        return facts
    return facts | _summary(good.min(axis=1), good.max(axis=1), good.mean(axis=1, dtype=np.float64),
                            good.std(axis=1, dtype=np.float64))


def _summary(lows, highs, means, stds) -> dict:
    facts = {"reflectance_min": float(np.min(lows)), "reflectance_max": float(np.max(highs))}
    if len(means) == len(BANDS):
        for band, mean, std in zip(BANDS, means, stds, strict=True):
            facts |= {f"{band.lower()}_mean": float(mean), f"{band.lower()}_std": float(std)}
    return facts


def mask_facts(path: Path, max_side: int | None = None) -> dict:
    """Georeferencing, value set and tailings fraction of one mask (read in full unless wider or
    higher than max_side).

    Raises:
        RasterReadError: the file is empty, not a GeoTIFF, or its pixels cannot be read.
    """
    with open_raster(path) as dataset:
        facts = _georef(dataset, "mask")
        if max_side and max(dataset.width, dataset.height) > max_side:
            return facts
        try:
            data = dataset.read(1)
        except RasterioIOError as error:
            raise _unreadable(path, error) from error
    values = np.unique(data)
    binary = np.isin(data, (0, 1))
    return facts | {"mask_values": ", ".join(str(v) for v in values[:8]),
                    "mask_nonbinary_count": int(data.size - np.count_nonzero(binary)),
                    "tailings_fraction": float(np.mean(data == TAILINGS))}


def _pair_facts(facts: dict) -> dict:
    """Agreement of image and mask, when both could be opened."""
    if "image_width" not in facts or "mask_width" not in facts:
        return {}
    image, mask = np.array(facts["image_transform"]), np.array(facts["mask_transform"])
    pixel = max(min(abs(image[0]), abs(image[4])), 1e-300)
    return {"shape_match": (facts["image_width"], facts["image_height"])
            == (facts["mask_width"], facts["mask_height"]),
            "crs_match": facts["image_crs"] == facts["mask_crs"],
            "transform_diff_px": float(np.max(np.abs(image - mask)) / pixel)}


def chip_facts(chip_id: str, image: Path | None, mask: Path | None,
               convention: Convention = "auto", max_side: int | None = None) -> dict:
    """One row of the facts table; errors become `*_error` facts instead of exceptions."""
    facts: dict = {"chip_id": chip_id, "image_path": str(image) if image else None,
                   "mask_path": str(mask) if mask else None,
                   "image_present": image is not None, "mask_present": mask is not None}
    if image is not None:
        try:
            facts |= image_facts(image, convention, max_side)
        except RasterReadError as error:
            facts["image_error"] = str(error)
    if mask is not None:
        try:
            facts |= mask_facts(mask, max_side)
        except RasterReadError as error:
            facts["mask_error"] = str(error)
    return facts | _pair_facts(facts)


COLUMNS: tuple[str, ...] = (
    "chip_id", "image_path", "mask_path", "image_present", "mask_present", "image_error",
    "mask_error", "reflectance_error", "image_width", "image_height", "image_bands", "image_crs",
    "image_dtype", "image_descriptions", "band_order_ok", "pixel_size_x", "pixel_size_y",
    "mask_width", "mask_height", "mask_bands", "mask_crs", "shape_match", "crs_match",
    "transform_diff_px", "image_hash", "nodata_fraction", "nonfinite_count", "reflectance_min",
    "reflectance_max", *BAND_COLUMNS, "mask_values", "mask_nonbinary_count", "tailings_fraction")


def gather_facts(data_dir: str | Path, convention: Convention = "auto",
                 max_side: int | None = None) -> pd.DataFrame:
    """The facts table of a dataset folder: one row per chip id, columns COLUMNS.

    Rasters wider or higher than max_side are described from their metadata only.
    """
    rows = [chip_facts(chip_id, image, mask, convention, max_side)
            for chip_id, (image, mask) in list_chips(data_dir).items()]
    return pd.DataFrame(rows, columns=list(COLUMNS))
