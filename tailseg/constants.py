"""Domain constants: bands, reflectance conventions and file layout, with their sources."""

from typing import Literal

# Band order of every image file and of the model input (Sentinel-2 MSI band names).
# Source: ESA Sentinel-2 User Handbook; B2 = blue (490 nm), B3 = green (560 nm), B4 = red (665 nm).
BANDS: tuple[str, ...] = ("B2", "B3", "B4")
BAND_ALIASES: dict[str, str] = {"blue": "B2", "green": "B3", "red": "B4", "b02": "B2",
                                "b03": "B3", "b04": "B4"}

# How raw pixel values become top-of-atmosphere reflectance.
# - "auto": GDAL scale/offset when the file has them, float data as reflectance, otherwise an error
#   that asks for an explicit convention (an integer file without metadata is ambiguous).
# - "gdal": reflectance = DN * scale + offset from the band metadata (the bundled chips).
# - "reflectance": the file already holds float reflectance.
# - "dn": Sentinel-2 L1C/L2A digital numbers before processing baseline 04.00: DN / 10000.
# - "dn_offset": baseline 04.00 and later (from 25 January 2022): (DN - 1000) / 10000.
# Source: ESA, "Sentinel-2: new processing baseline 04.00" (radiometric offset of -1000).
Convention = Literal["auto", "gdal", "reflectance", "dn", "dn_offset"]
CONVENTIONS: tuple[str, ...] = ("auto", "gdal", "reflectance", "dn", "dn_offset")
DN_QUANTIFICATION = 10000.0
DN_BASELINE_04_OFFSET = 1000.0

# Plausible top-of-atmosphere reflectance; the bundled chips span 0.03 to 0.49.
REFLECTANCE_MIN = -0.05
REFLECTANCE_MAX = 1.6
# Radiometric sanity of a whole scene before prediction (tailseg.radiometry). Over Brazil,
# every Sentinel-2 L1C/L2A scene that is not entirely cloud has dark pixels (vegetation in red,
# water, shadow): their B2-B4 reflectance is 0.0-0.08 (L2A) or 0.02-0.1 (L1C, haze included).
# Wrongly applied baseline-04.00 offset DN read as plain DN add 0.1 to every value (dark floor
# >= 0.1); pre-04.00 DN read with the offset subtract 0.1 (dark pixels below REFLECTANCE_MIN).
# Float reflectance read as DN is 10,000 times too dark (brightest pixels below 0.02).
DARK_FLOOR_MAX = 0.1  # the 1st percentile of the darkest band must not exceed this
BRIGHT_CEILING_MIN = 0.02  # the 99th percentile of the brightest band must reach this

# Smallest tailings site reported by prediction and change detection: 0.5 ha, 50 pixels of
# 10 m (about 70 m x 70 m). Every labelled site in the bundled data is larger (the smallest,
# cut by a chip border, is 113 pixels, 1.1 ha), while isolated detections of 1-20 pixels are
# noise at Sentinel-2 resolution: in a test scene 96 of 129 sites were single pixels, and
# `tailseg change` between two projections of one scene reported 87 of them as changes.
MIN_SITE_AREA_HA = 0.5

# Dataset layout: images/<id>.tif and masks/<id>.tif, paired by file name.
IMAGE_DIR = "images"
MASK_DIR = "masks"
RASTER_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")

# Mask values.
BACKGROUND = 0
TAILINGS = 1
