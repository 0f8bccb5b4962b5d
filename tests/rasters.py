"""Small seeded GeoTIFFs for tests: images, masks and whole datasets with a real CRS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

# About 10 m pixels in degrees, near the Brumadinho dam (Minas Gerais).
PIXEL_DEG = 8.93e-5
ORIGIN = (-44.12, -20.11)


def default_transform(pixel: float = PIXEL_DEG, origin: tuple[float, float] = ORIGIN):
    return from_origin(origin[0], origin[1], pixel, pixel)


def write_image(path: str | Path, array: np.ndarray, dtype: str = "float32",
                crs: str = "EPSG:4326", transform=None, scales=None, offsets=None,
                descriptions=("B2", "B3", "B4"), nodata=None) -> Path:
    """Write a (bands, height, width) array as a tiled GeoTIFF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bands, height, width = array.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands,
               "dtype": dtype, "crs": crs, "transform": transform or default_transform(),
               "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(array.astype(dtype))
        if scales is not None:
            dataset.scales = tuple(scales)
        if offsets is not None:
            dataset.offsets = tuple(offsets)
        if descriptions:
            for index, description in enumerate(descriptions[:bands], start=1):
                dataset.set_band_description(index, description)
    return path


def write_mask(path: str | Path, mask: np.ndarray, crs: str = "EPSG:4326", transform=None,
               dtype: str = "uint8") -> Path:
    """Write a (height, width) mask as a one-band GeoTIFF."""
    return write_image(path, mask[None], dtype=dtype, crs=crs, transform=transform,
                       descriptions=None)


def synthetic_chip(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (3, size, size) of vegetation with one bright, flat 'tailings' rectangle,
    and its mask; easy enough for a tiny model to learn something."""
    image = rng.normal([[[0.04]], [[0.07]], [[0.05]]], 0.01, (3, size, size))
    mask = np.zeros((size, size), np.uint8)
    h, w = rng.integers(size // 6, size // 3, 2)
    top, left = rng.integers(0, size - h), rng.integers(0, size - w)
    mask[top:top + h, left:left + w] = 1
    image[:, mask == 1] = np.array([0.20, 0.22, 0.25])[:, None] + rng.normal(0, 0.01, (3, 1))
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask


def make_dataset(root: str | Path, n_chips: int = 6, size: int = 32, seed: int = 0,
                 scaled_uint8: bool = True) -> Path:
    """A valid dataset like the bundled one: images/ as uint8 with GDAL scale/offset (or
    float reflectance), masks/ as uint8 0/1, paired by name, each chip at its own place."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for index in range(n_chips):
        image, mask = synthetic_chip(size, rng)
        transform = default_transform(origin=(ORIGIN[0] + index * 0.05, ORIGIN[1]))
        name = f"chip_{index:03d}.tif"
        if scaled_uint8:
            low = image.min(axis=(1, 2))
            scale = (image.max(axis=(1, 2)) - low) / 255.0
            dn = np.round((image - low[:, None, None]) / scale[:, None, None])
            write_image(root / "images" / name, dn, "uint8", transform=transform,
                        scales=scale, offsets=low)
        else:
            write_image(root / "images" / name, image, "float32", transform=transform)
        write_mask(root / "masks" / name, mask, transform=transform)
    return root


def corrupt_tile(path: str | Path, out: str | Path, column: int, row: int = 0,
                 block: int = 64) -> Path:
    """A deflate-compressed, tiled copy of the GeoTIFF path with the tile at (column, row)
    overwritten by garbage: its header reads, that tile's pixels do not."""
    out = Path(out)
    with rasterio.open(path) as source:
        profile = source.profile | {"compress": "deflate", "tiled": True, "blockxsize": block,
                                    "blockysize": block}
        with rasterio.open(out, "w", **profile) as copy:
            copy.write(source.read())
            copy.descriptions = source.descriptions
    with rasterio.open(out) as copy:
        offset = int(copy.get_tag_item(f"BLOCK_OFFSET_{column}_{row}", "TIFF", bidx=1))
        size = int(copy.get_tag_item(f"BLOCK_SIZE_{column}_{row}", "TIFF", bidx=1))
    with open(out, "r+b") as stream:
        stream.seek(offset)
        stream.write(b"\xff" * size)
    return out
