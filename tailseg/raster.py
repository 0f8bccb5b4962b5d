"""GeoTIFF reading with rasterio: images as top-of-atmosphere reflectance, masks as 0/1."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tailseg.constants import (
    BAND_ALIASES,
    BANDS,
    CONVENTIONS,
    DN_BASELINE_04_OFFSET,
    DN_QUANTIFICATION,
    Convention,
)
from tailseg.errors import (
    BandCountError,
    BandOrderError,
    DatasetValidationError,
    RasterReadError,
    ReflectanceConventionError,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Raster:
    """Pixels of one file with their georeferencing.

    Attributes:
        data: float32 reflectance, shape (height, width, bands), NaN where nodata.
        valid: bool (height, width), False where any band is nodata or not finite.
        crs: the file's coordinate reference system.
        transform: the file's affine geotransform.
        path: where the pixels came from.
    """

    data: np.ndarray
    valid: np.ndarray
    crs: Any
    transform: Any
    path: Path


def open_raster(path: str | Path) -> rasterio.io.DatasetReader:
    """Open a GeoTIFF, turning every failure into a RasterReadError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise RasterReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise RasterReadError(f"{path}: file is empty (0 bytes); re-export it")
    try:
        return rasterio.open(path)
    except RasterioIOError as error:
        raise RasterReadError(f"{path}: not a readable GeoTIFF ({error})") from error


def check_band_order(dataset: rasterio.io.DatasetReader, path: Path) -> None:
    """Raise unless the image has 3 bands, described (when described at all) as B2, B3, B4."""
    if dataset.count != len(BANDS):
        raise BandCountError(
            f"{path}: has {dataset.count} bands, expected {len(BANDS)} ({', '.join(BANDS)}); "
            "export only the blue, green and red bands in that order"
        )
    described = [d for d in dataset.descriptions if d]
    if not described:
        return
    names = tuple(BAND_ALIASES.get(d.strip().lower(), d.strip().upper()) for d in described)
    if names != BANDS:
        raise BandOrderError(
            f"{path}: band descriptions {dataset.descriptions} do not match {BANDS}; "
            "reorder the bands to blue, green, red"
        )


def parse_bands(text: str) -> tuple[str, ...]:
    """'B4,B3,B2' or 'red,green,blue' -> ('B4', 'B3', 'B2'); the file's band order."""
    names = tuple(BAND_ALIASES.get(n.strip().lower(), n.strip().upper()) for n in text.split(","))
    if sorted(names) != sorted(BANDS):
        raise BandOrderError(f"--bands {text!r}: name each of {', '.join(BANDS)} once, in the "
                             "order the file stores them, e.g. B2,B3,B4 or B4,B3,B2")
    return names


def scene_band_indexes(dataset: rasterio.io.DatasetReader, path: Path,
                       bands: tuple[str, ...] | None = None) -> list[int]:
    """1-based band indexes that read a scene as B2, B3, B4.

    bands is the file's order as the user states it (None: B2, B3, B4 assumed). Band
    descriptions, when the file has them, must agree; without them and without bands, the
    order cannot be checked and a warning says so.

    Raises:
        BandCountError: not 3 bands.
        BandOrderError: descriptions disagree with B2, B3, B4 or with bands.
    """
    if bands is None:
        check_band_order(dataset, path)
        if not any(dataset.descriptions):
            logger.warning("%s: no band descriptions; assuming the bands are B2, B3, B4 (blue, "
                           "green, red). Pass --bands (e.g. --bands B4,B3,B2 for an RGB export) "
                           "to state the order", path)
        return [1, 2, 3]
    if dataset.count != len(BANDS):
        check_band_order(dataset, path)  # raises BandCountError
    described = [BAND_ALIASES.get((d or "").strip().lower(), (d or "").strip().upper())
                 for d in dataset.descriptions]
    if any(dataset.descriptions) and tuple(described) != tuple(bands):
        raise BandOrderError(f"{path}: band descriptions {dataset.descriptions} contradict "
                             f"--bands {','.join(bands)}; fix the descriptions or --bands")
    return [bands.index(band) + 1 for band in BANDS]


def to_reflectance(
    raw: np.ndarray,
    dtype: str,
    scales: tuple[float, ...],
    offsets: tuple[float, ...],
    convention: Convention,
    path: Path | str,
) -> np.ndarray:
    """Convert raw band values (bands first) to float32 reflectance.

    Args:
        raw: array of shape (bands, height, width) as stored in the file.
        dtype: the file's data type name, e.g. "uint8", "uint16", "float32".
        scales: GDAL per-band scale factors (1.0 when absent).
        offsets: GDAL per-band offsets (0.0 when absent).
        convention: one of tailseg.constants.CONVENTIONS.
        path: the file, for error messages.

    Raises:
        ReflectanceConventionError: the convention is unknown, or "auto" cannot decide.
    """
    if convention not in CONVENTIONS:
        raise ReflectanceConventionError(
            f"{path}: unknown reflectance convention {convention!r}; use one of {CONVENTIONS}"
        )
    has_metadata = any(s != 1.0 for s in scales) or any(o != 0.0 for o in offsets)
    is_float = np.dtype(dtype).kind == "f"
    if convention == "auto":
        if has_metadata:
            convention = "gdal"
        elif is_float:
            convention = "reflectance"
        else:
            raise ReflectanceConventionError(
                f"{path}: {dtype} values without GDAL scale/offset metadata are ambiguous; pass "
                "convention 'dn' (DN/10000, Sentinel-2 before baseline 04.00), 'dn_offset' "
                "((DN-1000)/10000, baseline 04.00 and later) or 'reflectance'"
            )
    values = raw.astype(np.float32)
    match convention:
        case "gdal":
            scale = np.asarray(scales, dtype=np.float32)[:, None, None]
            offset = np.asarray(offsets, dtype=np.float32)[:, None, None]
            return values * scale + offset
        case "reflectance":
            return values
        case "dn":
            return values / DN_QUANTIFICATION
        case "dn_offset":
            return (values - DN_BASELINE_04_OFFSET) / DN_QUANTIFICATION
    raise AssertionError(convention)  # pragma: no cover - exhausted by the check above


def read_image(
    path: str | Path, convention: Convention = "auto", window: Window | None = None
) -> Raster:
    """Read a B2/B3/B4 image (or a window of it) as reflectance with its georeferencing.

    Raises:
        RasterReadError: the file is missing, empty or not a GeoTIFF.
        BandCountError, BandOrderError: the bands are not B2, B3, B4.
        ReflectanceConventionError: raw values cannot be converted (see to_reflectance).
    """
    path = Path(path)
    with open_raster(path) as dataset:
        check_band_order(dataset, path)
        try:
            raw = dataset.read(window=window)
            nodata_mask = dataset.read_masks(window=window)
        except RasterioIOError as error:
            raise RasterReadError(f"{path}: pixels cannot be read, truncated? ({error})") from error
        reflectance = to_reflectance(
            raw, dataset.dtypes[0], dataset.scales, dataset.offsets, convention, path
        )
        transform = dataset.window_transform(window) if window is not None else dataset.transform
        crs = dataset.crs
    valid = np.all(nodata_mask > 0, axis=0) & np.all(np.isfinite(reflectance), axis=0)
    data = np.moveaxis(reflectance, 0, -1)
    data[~valid] = np.nan
    return Raster(data=np.ascontiguousarray(data), valid=valid, crs=crs, transform=transform,
                  path=path)


def read_mask(path: str | Path) -> Raster:
    """Read a one-band mask; data is uint8 (height, width) with 1 = tailings.

    The stored values are checked before the cast to uint8, which would turn 0.7 or 256 into 0
    and -1 into 255.

    Raises:
        RasterReadError: the file is missing, empty, not a GeoTIFF or truncated.
        BandCountError: more than one band.
        DatasetValidationError: a value other than 0 and 1, with the values found.
    """
    path = Path(path)
    with open_raster(path) as dataset:
        if dataset.count != 1:
            raise BandCountError(f"{path}: mask has {dataset.count} bands, expected 1")
        try:
            data = dataset.read(1)
            nodata_mask = dataset.read_masks(1)
        except RasterioIOError as error:
            raise RasterReadError(f"{path}: pixels cannot be read, truncated? ({error})") from error
        crs, transform = dataset.crs, dataset.transform
    wrong = [str(value) for value in np.unique(data) if value not in (0, 1)]  # and NaN
    if wrong:
        shown = ", ".join(wrong[:8]) + (f" and {len(wrong) - 8} more" if len(wrong) > 8 else "")
        raise DatasetValidationError(
            f"{path}: {data.dtype} mask holds values other than 0 and 1: [{shown}]; masks must "
            "store 0 (background) and 1 (tailings), e.g. as uint8")
    return Raster(data=data.astype(np.uint8), valid=nodata_mask > 0, crs=crs,
                  transform=transform, path=path)
