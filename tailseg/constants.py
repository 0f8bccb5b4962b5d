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

# Dataset layout: images/<id>.tif and masks/<id>.tif, paired by file name.
IMAGE_DIR = "images"
MASK_DIR = "masks"
RASTER_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")

# Mask values.
BACKGROUND = 0
TAILINGS = 1
