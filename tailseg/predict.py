"""Prediction over whole scenes: windowed reading, batched inference, blending, GIS outputs.

predict_scene() checks everything it can before the first window (bands, CRS, radiometry,
output folder, existing outputs), reads a GeoTIFF window by window, runs a Predictor (any
backend, a callable reflectance (N, H, W, 3) -> probability (N, H, W, 1)), blends the windows
(tailseg.tiling) and writes, next to each other in the output folder:
- <stem>_probability.tif: float32 Cloud-Optimized GeoTIFF, NaN where the input is nodata;
- <stem>_mask.tif: uint8 COG, 1 = tailings (probability >= threshold), 0 = not, 255 = nodata;
- <stem>_tailings.geojson (or .gpkg): one polygon per connected site (tailseg.vectorize).
Both COGs carry the run's provenance as TAILSEG_* tags, the polygons as properties. All three
appear together or not at all, and replace existing ones as a set (tailseg.outputs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

import tailseg
from tailseg.config import PredictConfig
from tailseg.errors import (
    ConfigError,
    CRSMissingError,
    ModelFormatError,
    RasterReadError,
    TailsegError,
)
from tailseg.geopackage import write_geopackage
from tailseg.outputs import (
    check_existing,
    guard_os_errors,
    interrupts_as_exceptions,
    prepare_output_dir,
    remove_created,
    remove_leftovers,
    scratch_path,
    swap_into_place,
)
from tailseg.radiometry import check_radiometry
from tailseg.raster import open_raster, scene_band_indexes, to_reflectance
from tailseg.receptive import GRID, RAMP, blend_defaults, context_radius
from tailseg.tiling import StripAccumulator, Tile, Tiling
from tailseg.vectorize import polygonize, wgs84_transformer, write_geojson

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
VECTOR_SUFFIXES = {"geojson": ".geojson", "gpkg": ".gpkg"}
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
    valid_pixels: int = 0
    provenance: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def megapixels_per_second(self) -> float:
        return self.height * self.width / 1e6 / self.seconds

    def to_dict(self) -> dict:
        return asdict(self) | {"megapixels_per_second": self.megapixels_per_second}


def output_paths(input_path: str | Path, out_dir: str | Path,
                 vector_format: str = "geojson") -> dict[str, Path]:
    """The three output files for an input, named after its stem."""
    stem, out_dir = Path(input_path).stem, Path(out_dir)
    return {"probability": out_dir / f"{stem}_probability.tif",
            "mask": out_dir / f"{stem}_mask.tif",
            "tailings": out_dir / f"{stem}_tailings{VECTOR_SUFFIXES[vector_format]}"}


def default_batch_size(backend: str, window_shape: tuple[int, int]) -> int:
    pixels = BATCH_PIXELS.get(backend, REMOTE_BATCH_PIXELS)
    return max(1, pixels // (window_shape[0] * window_shape[1]))


def read_tile(dataset, tile: Tile, convention: str, indexes: list[int] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """A window's reflectance (window_h, window_w, 3) in band order B2, B3, B4 (file bands
    `indexes`), nodata filled with the window's band means and the part past the scene padded
    by reflection, and its validity (in-scene part)."""
    indexes = indexes or [1, 2, 3]
    window_h, window_w = tile.weights.shape
    height, width = min(window_h, dataset.height - tile.y), min(window_w, dataset.width - tile.x)
    window = Window(tile.x, tile.y, width, height)
    try:
        raw = dataset.read(indexes, window=window)
        masks = dataset.read_masks(indexes, window=window)
    except RasterioIOError as error:
        raise RasterReadError(f"{dataset.name}: pixels of {window} cannot be read, truncated "
                              f"or corrupt? ({error})") from error
    scales = tuple(dataset.scales[i - 1] for i in indexes)
    offsets = tuple(dataset.offsets[i - 1] for i in indexes)
    reflectance = np.moveaxis(to_reflectance(raw, dataset.dtypes[0], scales, offsets,
                                             convention, dataset.name), 0, -1)
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


def blend_scene(dataset, predictor, config: PredictConfig, batch_size: int,
                indexes: list[int] | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
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
                    image, valid = read_tile(dataset, tile, config.convention, indexes)
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


def _strip_profile(dataset, dtype: str, nodata: float) -> dict:
    return {"driver": "GTiff", "width": dataset.width, "height": dataset.height, "count": 1,
            "dtype": dtype, "nodata": nodata, "crs": dataset.crs,
            "transform": dataset.transform, "tiled": True, "blockxsize": 256,
            "blockysize": 256, "bigtiff": "IF_SAFER"}


def resolve_blending(config: PredictConfig, predictor, height: int, width: int
                     ) -> PredictConfig:
    """config with margin and overlap set: those given, else derived from the receptive field
    measured on the predictor (tailseg.receptive). A scene within one window needs neither.

    Raises:
        ConfigError: the derived overlap does not fit the window.
    """
    if config.margin is not None and config.overlap is not None:
        return config
    if height <= config.window and width <= config.window:
        margin, overlap = 0, 0  # one window: nothing to blend
    else:
        radius = context_radius(predictor)
        margin, overlap = blend_defaults(radius)
        if config.margin is not None:
            margin = config.margin
            overlap = GRID * -(-(2 * margin + RAMP) // GRID)
        overlap = config.overlap if config.overlap is not None else overlap
        if overlap >= config.window:
            raise ConfigError(f"the model's receptive-field radius ({radius} pixels) needs an "
                              f"overlap of {overlap} pixels, not less than the window "
                              f"{config.window}; pass a larger --window")
    try:
        return PredictConfig.model_validate(config.model_dump() | {"margin": margin,
                                                                   "overlap": overlap})
    except ValueError as error:
        raise ConfigError(f"invalid prediction options:\n{error}") from error


def _provenance(predictor, input_path: Path, threshold: float, convention: str,
                config: PredictConfig) -> dict:
    metadata = getattr(predictor, "metadata", {}) or {}
    model_path = getattr(predictor, "path", None)
    name, version = metadata.get("model_name"), metadata.get("version")
    if model_path is not None and (name is None or version is None):
        path = Path(str(model_path))  # a TF Serving layout: <base>/<name>/<version>
        if path.name.isdigit():
            name, version = name or path.parent.name, version or int(path.name)
        name = name or path.stem
    return {"tailseg_version": tailseg.__version__, "model_name": name or "unknown",
            "model_version": version, "model_path": str(model_path),
            "threshold": threshold, "convention": convention,
            "bands": ",".join(config.bands or ("B2", "B3", "B4")), "source": str(input_path),
            "window": config.window, "overlap": config.overlap, "margin": config.margin,
            "connectivity": config.connectivity, "min_area_ha": config.min_area_ha}


def _threshold(predictor, config: PredictConfig) -> float:
    """config.threshold, else the model's (checked: a predictor need not come from
    tailseg.backends, which checks it on loading), else 0.5."""
    if config.threshold is not None:
        return config.threshold
    threshold = (getattr(predictor, "metadata", {}) or {}).get("threshold", 0.5)
    if (isinstance(threshold, bool) or not isinstance(threshold, int | float)
            or not 0.0 < threshold < 1.0):
        source = getattr(predictor, "path", None)
        raise ModelFormatError(f"{f'{source}: ' if source else ''}the model's threshold "
                               f"{threshold!r} is not a number between 0 and 1; repair its "
                               "metadata or pass --threshold")
    return float(threshold)


def _tags(provenance: dict) -> dict[str, str]:
    """GeoTIFF tags: TAILSEG_MODEL_NAME, TAILSEG_THRESHOLD, TAILSEG_VERSION, ..."""
    return {f"TAILSEG_{key.removeprefix('tailseg_').upper()}": str(value)
            for key, value in provenance.items()}


def _check_scene(dataset, input_path: Path, config: PredictConfig):
    """(band indexes, convention, radiometry evidence), or the error of a scene that cannot be
    predicted: bands, CRS (missing, or not transformable to WGS84), reflectance convention."""
    indexes = scene_band_indexes(dataset, input_path, config.bands)
    if dataset.crs is None:
        raise CRSMissingError(f"{input_path}: has no coordinate reference system, so the "
                              "outputs cannot be placed on a map; assign one, e.g. "
                              "`gdal_edit.py -a_srs EPSG:32723 FILE`")
    wgs84_transformer(dataset.crs, input_path)  # the polygons are in WGS84
    convention, evidence = check_radiometry(dataset, input_path, indexes, config.convention,
                                            config.force)
    return indexes, convention, evidence


def check_scene(input_path: str | Path, out_dir: str | Path,
                config: PredictConfig | None = None) -> None:
    """The checks predict_scene makes before its first window, without a model: for a caller
    that predicts several scenes and must not start unless all can run (tailseg change).

    Raises:
        What predict_scene raises for bad input, and OutputExistsError.
    """
    config = config or PredictConfig()
    input_path = Path(input_path)
    with open_raster(input_path) as dataset:
        _check_scene(dataset, input_path, config)
    check_existing(output_paths(input_path, out_dir, config.vector_format), config.overwrite)


def predict_scene(input_path: str | Path, predictor, out_dir: str | Path,
                  config: PredictConfig | None = None) -> SceneResult:
    """Predict a whole GeoTIFF scene and write probability, mask and site polygons.

    Everything checkable is checked before the first window runs. SIGTERM is handled like
    SIGINT; on any error or signal nothing is left in out_dir, existing outputs stay and the
    folders this run created are removed.

    Args:
        input_path: a B2/B3/B4 GeoTIFF of any size and CRS (see tailseg.raster conventions).
        predictor: a tailseg.backends.Predictor, or any callable NHWC float32 -> NHW1.
        out_dir: the output folder (created when missing, removed again if the run fails).
        config: windows, blending and output settings.

    Raises:
        RasterReadError, BandCountError, BandOrderError: bad input.
        CRSMissingError: the scene has no CRS, or one that cannot be transformed to WGS84.
        ModelFormatError: the predictor's metadata threshold is not a number in (0, 1).
        ReflectanceConventionError: the convention gives implausible reflectance.
        OutputExistsError: an output exists and config.overwrite is False.
        OutputWriteError: the output folder cannot be written.
        PredictionInterrupted, KeyboardInterrupt: SIGTERM or SIGINT.
    """
    config = config or PredictConfig()
    started = time.perf_counter()
    input_path, out_dir = Path(input_path), Path(out_dir)
    threshold = _threshold(predictor, config)
    finals = output_paths(input_path, out_dir, config.vector_format)
    with ExitStack() as stack:
        stack.enter_context(interrupts_as_exceptions())
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        dataset = stack.enter_context(open_raster(input_path))
        indexes, convention, evidence = _check_scene(dataset, input_path, config)
        config = resolve_blending(config, predictor, dataset.height, dataset.width)
        config = config.model_copy(update={"convention": convention})
        created = prepare_output_dir(out_dir)
        # On failure, after the scratch files are gone (callbacks run last-in first-out).
        stack.push(lambda failed, *_: remove_created(created) if failed else None)
        remove_leftovers(out_dir, finals.values())
        check_existing(finals, config.overwrite)
        provenance = _provenance(predictor, input_path, threshold, convention, config)
        scratch = {key: scratch_path(out_dir, f"{input_path.stem}_{key}.strips.tif")
                   for key in ("probability", "mask")}
        staged = {key: scratch_path(out_dir, path.name) for key, path in finals.items()}
        stack.callback(lambda: [p.unlink(missing_ok=True)
                                for p in (*scratch.values(), *staged.values())])
        try:
            result = _write_outputs(dataset, predictor, config, threshold, indexes, scratch,
                                    staged, provenance)
            swap_into_place(staged, finals)
        except OSError as error:
            if isinstance(error, TailsegError):  # e.g. RasterReadError: already clear
                raise
            raise guard_os_errors(out_dir, error) from error
    n_sites, area, n_windows, valid_pixels, timings = result
    warnings = []
    if valid_pixels == 0:
        warnings.append(f"{input_path}: every pixel is nodata; the outputs hold no data")
    elif evidence is None:
        warnings.append(f"{input_path}: too few valid pixels to check the radiometry; "
                        f"convention '{convention}' was assumed")
    for warning in warnings:
        logger.warning(warning)
    return SceneResult(outputs={k: str(p) for k, p in finals.items()}, n_sites=n_sites,
                       total_area_ha=area, threshold=threshold, height=dataset.height,
                       width=dataset.width, n_windows=n_windows,
                       seconds=time.perf_counter() - started,
                       timings={k: round(v, 3) for k, v in timings.items()},
                       valid_pixels=valid_pixels, provenance=provenance, warnings=warnings)


def _write_outputs(dataset, predictor, config: PredictConfig, threshold: float,
                   indexes: list[int], scratch: dict[str, Path], staged: dict[str, Path],
                   provenance: dict) -> tuple[int, float, int, int, dict[str, float]]:
    """Run the windows into strip rasters, then polygons and COGs under the staged names.

    Returns (sites, total area in ha, windows, valid pixels, seconds per stage).
    """
    started = time.perf_counter()
    tiling = Tiling(dataset.height, dataset.width, config.window, config.overlap, config.margin)
    batch_size = config.batch_size or default_batch_size(
        getattr(predictor, "backend", "tf"), tiling.window_shape)
    valid_pixels = 0
    with rasterio.open(scratch["probability"], "w",
                       **_strip_profile(dataset, "float32", np.nan)) as probability_out, \
            rasterio.open(scratch["mask"], "w",
                          **_strip_profile(dataset, "uint8", MASK_NODATA)) as mask_out:
        for out in (probability_out, mask_out):
            out.update_tags(**_tags(provenance))
        for start, blended, valid in blend_scene(dataset, predictor, config, batch_size,
                                                 indexes):
            window = Window(0, start, dataset.width, blended.shape[0])
            probability_out.write(blended, 1, window=window)
            mask = np.where(valid, blended >= threshold, MASK_NODATA).astype(np.uint8)
            mask_out.write(mask, 1, window=window)
            valid_pixels += int(valid.sum())
    timings = {"windows": time.perf_counter() - started}
    sites = polygonize(scratch["mask"], scratch["probability"], config.connectivity,
                       config.min_area_ha)
    writer = write_geopackage if config.vector_format == "gpkg" else write_geojson
    writer(sites, staged["tailings"], provenance)
    timings["polygons"] = time.perf_counter() - started - sum(timings.values())
    rasterio.shutil.copy(scratch["probability"], staged["probability"], **COG_OPTIONS,
                         resampling="average", predictor="3")
    rasterio.shutil.copy(scratch["mask"], staged["mask"], **COG_OPTIONS, resampling="nearest")
    timings["cog"] = time.perf_counter() - started - sum(timings.values())
    return (len(sites), float(sum(s.area_ha for s in sites)), tiling.n_tiles, valid_pixels,
            timings)


def run_prediction(input_path: str | Path, model: str | Path, out_dir: str | Path,
                   backend: str | None = None, config: PredictConfig | None = None
                   ) -> SceneResult:
    """Load a model (SavedModel, TF Serving base path, .onnx or server URL) and predict.

    backend: "tf", "onnx", "serving" (model is then a server URL, see tailseg.serving.client)
    or None (from the model path).
    """
    return predict_scene(input_path, load_model(model, backend), out_dir, config)


def load_model(model: str | Path, backend: str | None = None):
    """The predictor of a model path or server URL (backends as in run_prediction)."""
    from tailseg.backends import load_predictor

    is_url = str(model).startswith(SERVER_URL_PREFIXES)
    if backend == "serving" and not is_url:
        raise ModelFormatError(f"{model}: backend 'serving' needs a model server URL, e.g. "
                               "grpc://HOST:8500/tailseg or http://HOST:8501/v1/models/tailseg")
    return load_predictor(str(model) if is_url else model,
                          None if backend == "serving" else backend)
