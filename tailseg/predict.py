"""Prediction over whole scenes: windowed reading, batched inference, blending, GIS outputs.

predict_scene() reads a GeoTIFF window by window, runs a Predictor (any backend, a callable
reflectance (N, H, W, 3) -> probability (N, H, W, 1)), blends the windows (tailseg.tiling) and
writes, next to each other in the output folder:
- <stem>_probability.tif: float32 Cloud-Optimized GeoTIFF, NaN where the input is nodata;
- <stem>_mask.tif: uint8 COG, 1 = tailings (probability >= threshold), 0 = not, 255 = nodata;
- <stem>_tailings.geojson: one polygon per connected site (tailseg.vectorize).
All three appear together or not at all: they are written as hidden temporary files in the
output folder and renamed at the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tailseg.config import PredictConfig
from tailseg.errors import ModelFormatError, OutputExistsError, RasterReadError
from tailseg.raster import check_band_order, open_raster, to_reflectance
from tailseg.tiling import StripAccumulator, Tile, Tiling
from tailseg.vectorize import polygonize, write_geojson

logger = logging.getLogger(__name__)

MASK_NODATA = 255
# Pixels per predictor call. Local backends get about one megapixel (one 1024-pixel window, four
# of 512): bigger batches did not run faster on CPU, only used more memory. Model servers
# ("grpc", "rest") get one window per request, since a bigger batch only makes requests larger.
BATCH_PIXELS = {"tf": 1024 * 1024, "onnx": 1024 * 1024}
# GDAL's block cache defaults to 5 % of RAM and grows with the scene; capped, memory stays flat.
GDAL_CACHE_MB = 256
REMOTE_BATCH_PIXELS = 512 * 512
SERVER_URL_PREFIXES = ("grpc://", "http://", "https://")
OUTPUTS = ("probability", "mask", "tailings")
COG_OPTIONS = {"driver": "COG", "compress": "DEFLATE", "blocksize": 512, "overviews": "AUTO",
               "bigtiff": "IF_SAFER"}


@dataclass(frozen=True)
class SceneResult:
    """What predict_scene wrote and how long it took."""

    outputs: dict[str, str]
    n_sites: int
    total_area_ha: float
    threshold: float
    height: int
    width: int
    n_windows: int
    seconds: float
    timings: dict[str, float]  # seconds per stage: windows (read, infer, blend), polygons, cog

    @property
    def megapixels_per_second(self) -> float:
        return self.height * self.width / 1e6 / self.seconds

    def to_dict(self) -> dict:
        return asdict(self) | {"megapixels_per_second": self.megapixels_per_second}


def output_paths(input_path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """The three output files for an input, named after its stem."""
    stem, out_dir = Path(input_path).stem, Path(out_dir)
    return {"probability": out_dir / f"{stem}_probability.tif",
            "mask": out_dir / f"{stem}_mask.tif",
            "tailings": out_dir / f"{stem}_tailings.geojson"}


def default_batch_size(backend: str, window_shape: tuple[int, int]) -> int:
    pixels = BATCH_PIXELS.get(backend, REMOTE_BATCH_PIXELS)
    return max(1, pixels // (window_shape[0] * window_shape[1]))


def read_tile(dataset, tile: Tile, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """A window's reflectance (window_h, window_w, 3), nodata filled with the window's band
    means and the part past the scene padded by reflection, and its validity (in-scene part)."""
    window_h, window_w = tile.weights.shape
    height, width = min(window_h, dataset.height - tile.y), min(window_w, dataset.width - tile.x)
    window = Window(tile.x, tile.y, width, height)
    try:
        raw = dataset.read(window=window)
        masks = dataset.read_masks(window=window)
    except RasterioIOError as error:
        raise RasterReadError(f"{dataset.name}: pixels of {window} cannot be read, truncated? "
                              f"({error})") from error
    reflectance = np.moveaxis(to_reflectance(raw, dataset.dtypes[0], dataset.scales,
                                             dataset.offsets, convention, dataset.name), 0, -1)
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(reflectance), axis=-1)
    if valid.any() and not valid.all():
        reflectance[~valid] = reflectance[valid].mean(axis=0)
    if height < window_h or width < window_w:
        reflectance = np.pad(reflectance, ((0, window_h - height), (0, window_w - width), (0, 0)),
                             mode="symmetric")
    return reflectance, valid


def _batches(tiles: list[Tile], size: int) -> Iterator[list[Tile]]:
    for start in range(0, len(tiles), size):
        yield tiles[start: start + size]


def blend_scene(dataset, predictor, config: PredictConfig, batch_size: int) -> Iterator[
        tuple[int, np.ndarray, np.ndarray]]:
    """Yield (first row, probability strip, valid strip) for consecutive strips of the scene."""
    from tqdm import tqdm

    tiling = Tiling(dataset.height, dataset.width, config.window, config.overlap, config.margin)
    accumulator = StripAccumulator(tiling)
    valid_strip = np.zeros((tiling.window_shape[0], dataset.width), dtype=bool)
    progress = tqdm(total=tiling.n_tiles, unit="window", disable=not config.progress,
                    desc=Path(dataset.name).name)
    with progress:
        for row in range(len(tiling.row_starts)):
            for batch in _batches(list(tiling.strip(row)), batch_size):
                images, kept = [], []
                for tile in batch:
                    image, valid = read_tile(dataset, tile, config.convention)
                    valid_strip[: valid.shape[0], tile.x: tile.x + valid.shape[1]] = valid
                    if valid.any():  # all-nodata windows cost nothing
                        images.append(image)
                        kept.append(tile)
                if images:
                    probability = np.asarray(predictor(np.stack(images)), dtype=np.float32)
                    for tile, window_probability in zip(kept, probability[..., 0], strict=True):
                        accumulator.add(tile, window_probability)
                progress.update(len(batch))
            start, blended = accumulator.pop(row)
            valid = valid_strip[: blended.shape[0]].copy()
            blended[~valid] = np.nan
            yield start, blended, valid
            stride = blended.shape[0]
            valid_strip[:-stride] = valid_strip[stride:].copy()
            valid_strip[-stride:] = False
    logger.info("%s: %d windows of %s", dataset.name, tiling.n_tiles, tiling.window_shape)


@contextmanager
def staged_files(finals: dict[str, Path], overwrite: bool) -> Iterator[dict[str, Path]]:
    """Temporary names beside each final path, renamed into place only if the block succeeds."""
    existing = [str(p) for p in finals.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"outputs exist already: {', '.join(existing)}; pass overwrite "
                                "(--overwrite) or choose another output folder")
    staged = {key: p.with_name(f".{p.name}.tmp-{os.getpid()}") for key, p in finals.items()}
    try:
        yield staged
        for key, path in staged.items():
            os.replace(path, finals[key])
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)


def _strip_profile(dataset, dtype: str, nodata: float) -> dict:
    return {"driver": "GTiff", "width": dataset.width, "height": dataset.height, "count": 1,
            "dtype": dtype, "nodata": nodata, "crs": dataset.crs,
            "transform": dataset.transform, "tiled": True, "blockxsize": 256,
            "blockysize": 256, "bigtiff": "IF_SAFER"}


def predict_scene(input_path: str | Path, predictor, out_dir: str | Path,
                  config: PredictConfig | None = None) -> SceneResult:
    """Predict a whole GeoTIFF scene and write probability, mask and site polygons.

    Args:
        input_path: a B2/B3/B4 GeoTIFF of any size and CRS (see tailseg.raster conventions).
        predictor: a tailseg.backends.Predictor, or any callable NHWC float32 -> NHW1.
        out_dir: the output folder (created when missing).
        config: windows, blending and output settings.

    Raises:
        RasterReadError, BandCountError, BandOrderError, ReflectanceConventionError: bad input.
        OutputExistsError: an output exists and config.overwrite is False.
    """
    config = config or PredictConfig()
    started = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = getattr(predictor, "metadata", {}) or {}
    threshold = float(config.threshold or metadata.get("threshold", 0.5))
    finals = output_paths(input_path, out_dir)
    scratch = {key: out_dir / f".{input_path.stem}_{key}.strips-{os.getpid()}.tif"
               for key in ("probability", "mask")}
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        stack.callback(lambda: [p.unlink(missing_ok=True) for p in scratch.values()])
        staged = stack.enter_context(staged_files(finals, config.overwrite))
        dataset = stack.enter_context(open_raster(input_path))
        check_band_order(dataset, input_path)
        tiling = Tiling(dataset.height, dataset.width, config.window, config.overlap,
                        config.margin)
        batch_size = config.batch_size or default_batch_size(
            getattr(predictor, "backend", "tf"), tiling.window_shape)
        with rasterio.open(scratch["probability"], "w",
                           **_strip_profile(dataset, "float32", np.nan)) as probability_out, \
                rasterio.open(scratch["mask"], "w",
                              **_strip_profile(dataset, "uint8", MASK_NODATA)) as mask_out:
            for start, blended, valid in blend_scene(dataset, predictor, config, batch_size):
                window = Window(0, start, dataset.width, blended.shape[0])
                probability_out.write(blended, 1, window=window)
                mask = np.where(valid, blended >= threshold, MASK_NODATA).astype(np.uint8)
                mask_out.write(mask, 1, window=window)
        timings = {"windows": time.perf_counter() - started}
        sites = polygonize(scratch["mask"], scratch["probability"], config.connectivity,
                           config.min_area_ha)
        write_geojson(sites, staged["tailings"], {"source": str(input_path),
                                                  "threshold": threshold})
        timings["polygons"] = time.perf_counter() - started - sum(timings.values())
        rasterio.shutil.copy(scratch["probability"], staged["probability"], **COG_OPTIONS,
                             resampling="average", predictor="3")
        rasterio.shutil.copy(scratch["mask"], staged["mask"], **COG_OPTIONS,
                             resampling="nearest")
        timings["cog"] = time.perf_counter() - started - sum(timings.values())
        height, width = dataset.height, dataset.width
    return SceneResult(outputs={k: str(p) for k, p in finals.items()}, n_sites=len(sites),
                       total_area_ha=float(sum(s.area_ha for s in sites)), threshold=threshold,
                       height=height, width=width, n_windows=tiling.n_tiles,
                       seconds=time.perf_counter() - started,
                       timings={k: round(v, 3) for k, v in timings.items()})


def run_prediction(input_path: str | Path, model: str | Path, out_dir: str | Path,
                   backend: str | None = None, config: PredictConfig | None = None
                   ) -> SceneResult:
    """Load a model (SavedModel, TF Serving base path, .onnx or server URL) and predict.

    backend: "tf", "onnx", "serving" (model is then a server URL, see tailseg.serving.client)
    or None (from the model path).
    """
    from tailseg.backends import load_predictor

    is_url = str(model).startswith(SERVER_URL_PREFIXES)
    if backend == "serving" and not is_url:
        raise ModelFormatError(f"{model}: backend 'serving' needs a model server URL, e.g. "
                               "grpc://HOST:8500/tailseg or http://HOST:8501/v1/models/tailseg")
    predictor = load_predictor(str(model) if is_url else model,
                               None if backend == "serving" else backend)
    return predict_scene(input_path, predictor, out_dir, config)
