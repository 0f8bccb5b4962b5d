"""Radiometric sanity of a scene before prediction: is the reflectance convention plausible?

A wrong convention does not fail, it silently maps nonsense: baseline-04.00 DN read as plain DN
are 0.1 too bright everywhere (the model then marks most of a scene as tailings), pre-04.00 DN
read with the offset are 0.1 too dark, raw DN read as reflectance are thousands of times too
bright. check_radiometry() samples valid pixels of the scene, converts them with each candidate
convention and keeps those whose values look like Sentinel-2 L1C/L2A reflectance over Brazil
(limits and their reasons in tailseg.constants):
- at most 0.5 % of the values below REFLECTANCE_MIN and at most 0.5 % above REFLECTANCE_MAX;
- dark pixels present: the 1st percentile of the darkest band at most DARK_FLOOR_MAX;
- bright pixels present: the 99th percentile of the brightest band at least BRIGHT_CEILING_MIN.
An explicit convention that fails is refused (unless forced), naming the one that would fit;
"auto" picks the convention only when exactly one candidate passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tailseg.constants import (
    BRIGHT_CEILING_MIN,
    DARK_FLOOR_MAX,
    REFLECTANCE_MAX,
    REFLECTANCE_MIN,
)
from tailseg.errors import RasterReadError, ReflectanceConventionError
from tailseg.raster import to_reflectance

logger = logging.getLogger(__name__)

SAMPLE_GRID = 3  # windows per axis spread over the scene
SAMPLE_SIDE = 256  # pixels per window side
OVERVIEW_SIDE = 512  # fallback: the whole scene decimated to at most this many pixels a side
DESCRIPTIONS = {"gdal": "GDAL scale/offset metadata", "reflectance": "float reflectance",
                "dn": "DN / 10000, Sentinel-2 before processing baseline 04.00",
                "dn_offset": "(DN - 1000) / 10000, baseline 04.00 and later"}


@dataclass(frozen=True)
class Evidence:
    """Statistics of the sample under one convention, and why it is implausible (or None)."""

    convention: str
    below_min: float  # share of values below REFLECTANCE_MIN
    above_max: float  # share of values above REFLECTANCE_MAX
    dark_floor: float  # 1st percentile of the darkest band
    bright_ceiling: float  # 99th percentile of the brightest band
    problem: str | None

    def summary(self) -> str:
        return (f"'{self.convention}' gives 1st percentile {self.dark_floor:.3f}, 99th "
                f"percentile {self.bright_ceiling:.3f}, {self.below_min:.1%} below "
                f"{REFLECTANCE_MIN}, {self.above_max:.1%} above {REFLECTANCE_MAX}")


def sample_valid_pixels(dataset, indexes: list[int]) -> np.ndarray:
    """Raw values (bands, n) of valid pixels in SAMPLE_GRID^2 windows spread over the scene,
    or of the whole scene decimated when those windows hold none."""
    side_y, side_x = min(SAMPLE_SIDE, dataset.height), min(SAMPLE_SIDE, dataset.width)
    corners = {(int((dataset.width - side_x) * j / (SAMPLE_GRID - 1)),
                int((dataset.height - side_y) * i / (SAMPLE_GRID - 1)))
               for i in range(SAMPLE_GRID) for j in range(SAMPLE_GRID)}
    samples = []
    for x, y in sorted(corners):
        window = Window(x, y, side_x, side_y)
        samples.append(_read_valid(dataset, indexes, f"{window}", window=window))
    pixels = np.concatenate(samples, axis=1)
    if pixels.shape[1]:
        return pixels
    factor = max(1, -(-max(dataset.height, dataset.width) // OVERVIEW_SIDE))
    shape = (len(indexes), -(-dataset.height // factor), -(-dataset.width // factor))
    return _read_valid(dataset, indexes, "an overview", out_shape=shape,
                       resampling=Resampling.nearest)


def _read_valid(dataset, indexes: list[int], what: str, **read) -> np.ndarray:
    """_valid of one read; a corrupt or truncated file is a RasterReadError naming it."""
    try:
        return _valid(dataset.read(indexes, **read), dataset.read_masks(indexes, **read))
    except RasterioIOError as error:
        raise RasterReadError(f"{dataset.name}: pixels of {what} cannot be read, truncated or "
                              f"corrupt? ({error})") from error


def _valid(raw: np.ndarray, masks: np.ndarray) -> np.ndarray:
    keep = np.all(masks > 0, axis=0) & np.all(np.isfinite(raw), axis=0)
    return raw[:, keep]


def assess(raw: np.ndarray, dtype: str, scales, offsets, convention: str, path) -> Evidence:
    """Convert a (bands, n) sample with one convention and judge it (module docstring)."""
    values = to_reflectance(raw[:, :, None], dtype, scales, offsets, convention, path)[:, :, 0]
    below = float(np.mean(values < REFLECTANCE_MIN))
    above = float(np.mean(values > REFLECTANCE_MAX))
    floor = float(np.percentile(values, 1, axis=1).min())
    ceiling = float(np.percentile(values, 99, axis=1).max())
    problem = None
    if below > 0.005:
        problem = f"{below:.1%} of the values are below {REFLECTANCE_MIN}"
    elif above > 0.005:
        problem = f"{above:.1%} of the values are above {REFLECTANCE_MAX}"
    elif floor > DARK_FLOOR_MAX:
        problem = (f"no dark pixels: the 1st percentile of the darkest band is {floor:.3f}, "
                   f"above {DARK_FLOOR_MAX} (vegetation and water are darker)")
    elif ceiling < BRIGHT_CEILING_MIN:
        problem = (f"no bright pixels: the 99th percentile of the brightest band is "
                   f"{ceiling:.4f}, below {BRIGHT_CEILING_MIN}")
    return Evidence(convention, below, above, floor, ceiling, problem)


def candidates(dtype: str, scales, offsets) -> tuple[str, ...]:
    """Conventions "auto" chooses among: what the file's metadata and data type allow."""
    if any(s != 1.0 for s in scales) or any(o != 0.0 for o in offsets):
        return ("gdal",)
    if np.dtype(dtype).kind == "f":
        return ("reflectance", "dn", "dn_offset")
    return ("dn", "dn_offset")


def check_radiometry(dataset, path: Path, indexes: list[int], convention: str,
                     force: bool = False) -> tuple[str, Evidence | None]:
    """The convention to use for a scene and the evidence for it (None: no valid pixel).

    Raises:
        ReflectanceConventionError: the requested convention gives implausible reflectance (and
            force is False), or "auto" finds no or several plausible conventions.
    """
    dtype = dataset.dtypes[indexes[0] - 1]
    scales = [dataset.scales[i - 1] for i in indexes]
    offsets = [dataset.offsets[i - 1] for i in indexes]
    options = candidates(dtype, scales, offsets)
    raw = sample_valid_pixels(dataset, indexes)
    if not raw.shape[1]:
        chosen = options[0] if convention == "auto" else convention
        return chosen, None
    tried = options if convention == "auto" else (convention, *options)
    evidence = {c: assess(raw, dtype, scales, offsets, c, path) for c in dict.fromkeys(tried)}
    fitting = [c for c in options if evidence[c].problem is None]
    if convention != "auto":
        judged = evidence[convention]
        if judged.problem is None:
            return convention, judged
        hint = (f"convention '{fitting[0]}' ({DESCRIPTIONS[fitting[0]]}) fits; pass "
                f"--convention {fitting[0]}" if len(fitting) == 1 else
                "no other convention fits either; check the file's bands and scaling")
        message = (f"{path}: convention '{convention}' gives implausible Sentinel-2 reflectance: "
                   f"{judged.problem} (sampled {raw.shape[1]} valid pixels); {hint}, or --force "
                   "to predict anyway")
        if not force:
            raise ReflectanceConventionError(message)
        logger.warning("%s (forced)", message)
        return convention, judged
    if len(fitting) == 1:
        logger.info("%s: convention auto -> '%s' (%s): %s; the other candidates are "
                    "implausible", path, fitting[0], DESCRIPTIONS[fitting[0]],
                    evidence[fitting[0]].summary())
        return fitting[0], evidence[fitting[0]]
    seen = "; ".join(f"{e.summary()}" + (f": {e.problem}" if e.problem else "")
                     for e in evidence.values())
    verdict = ("none of them is plausible" if not fitting
               else f"{' and '.join(fitting)} are both plausible")
    raise ReflectanceConventionError(
        f"{path}: {dtype} values cannot be converted with confidence, {verdict} ({seen}); pass "
        "--convention dn (DN/10000, before baseline 04.00), dn_offset ((DN-1000)/10000, baseline "
        "04.00 and later) or reflectance" + (", or --force with one of them" if not fitting
                                             else ""))
