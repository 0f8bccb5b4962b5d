"""Chips on disk: pairing images with masks, loading, excluding invalid chips, and the
training/validation input pipelines (the split is in tailseg/split.py)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailseg.config import TrainConfig
from tailseg.constants import IMAGE_DIR, MASK_DIR, RASTER_SUFFIXES, Convention
from tailseg.errors import DatasetNotFoundError, PairingError, TailsegError
from tailseg.raster import read_image, read_mask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChipPair:
    chip_id: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Chip:
    chip_id: str
    image: np.ndarray  # float32 (H, W, 3) reflectance
    mask: np.ndarray  # uint8 (H, W), 1 = tailings


def _rasters(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES}


def find_pairs(data_dir: str | Path) -> tuple[list[ChipPair], dict[str, str]]:
    """Pair images/<id>.tif with masks/<id>.tif.

    Returns:
        The pairs sorted by id, and {id: reason} for every file without a partner.

    Raises:
        DatasetNotFoundError: data_dir, images/ or masks/ does not exist.
    """
    data_dir = Path(data_dir)
    images_dir, masks_dir = data_dir / IMAGE_DIR, data_dir / MASK_DIR
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"{folder}: folder not found; a dataset holds {IMAGE_DIR}/<id>.tif and "
                f"{MASK_DIR}/<id>.tif paired by file name")
    images, masks = _rasters(images_dir), _rasters(masks_dir)
    unpaired = {chip_id: f"{images[chip_id]}: image has no mask {masks_dir}/{chip_id}.tif"
                for chip_id in images.keys() - masks.keys()}
    unpaired |= {chip_id: f"{masks[chip_id]}: mask has no image {images_dir}/{chip_id}.tif"
                 for chip_id in masks.keys() - images.keys()}
    pairs = [ChipPair(i, images[i], masks[i]) for i in sorted(images.keys() & masks.keys())]
    return pairs, dict(sorted(unpaired.items()))


def require_pairs(data_dir: str | Path) -> list[ChipPair]:
    """find_pairs, raising PairingError that names every unpaired file."""
    pairs, unpaired = find_pairs(data_dir)
    if unpaired:
        raise PairingError("unpaired files:\n  " + "\n  ".join(unpaired.values()))
    return pairs


def load_chip(pair: ChipPair, convention: Convention = "auto") -> Chip:
    """Read one image/mask pair, checking that they match and hold usable values.

    Raises:
        TailsegError: a subclass naming the file and the problem.
    """
    image = read_image(pair.image, convention)
    mask = read_mask(pair.mask)  # refuses values other than 0/1 as stored, before any cast
    if image.data.shape[:2] != mask.data.shape:
        raise PairingError(f"{pair.image}: image is {image.data.shape[1]} x {image.data.shape[0]}"
                           f" pixels but mask {pair.mask} is {mask.data.shape[1]} x "
                           f"{mask.data.shape[0]} (width x height): a truncated export?")
    if image.crs != mask.crs or not image.transform.almost_equals(mask.transform):
        raise PairingError(f"{pair.image}: CRS or geotransform differs from mask {pair.mask}")
    if not image.valid.all():
        raise PairingError(f"{pair.image}: {np.count_nonzero(~image.valid)} nodata or "
                           "non-finite pixels")
    return Chip(pair.chip_id, image.data, mask.data)


def load_chips(pairs: list[ChipPair], convention: Convention = "auto"
               ) -> tuple[list[Chip], dict[str, str]]:
    """Load every pair; chips that fail are left out and returned as {id: reason}."""
    chips, excluded = [], {}
    for pair in pairs:
        try:
            chips.append(load_chip(pair, convention))
        except TailsegError as error:
            excluded[pair.chip_id] = str(error)
            logger.warning("excluding chip %s: %s", pair.chip_id, error)
    return chips, excluded


def band_statistics(chips: list[Chip]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of reflectance over all pixels of the chips."""
    pixels = np.concatenate([c.image.reshape(-1, c.image.shape[-1]) for c in chips])
    return pixels.mean(axis=0), np.maximum(pixels.std(axis=0), 1e-6)


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad the first two axes up to a multiple (used for odd-sized chips)."""
    height, width = array.shape[:2]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return array
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="reflect" if min(height, width) > 1 else "edge")


def _random_crop(chip: Chip, size: int, positive: bool, rng: np.random.Generator):
    height, width = chip.mask.shape
    if height < size or width < size:
        image = pad_to_multiple(chip.image, size)
        mask = pad_to_multiple(chip.mask, size)
        return image[:size, :size], mask[:size, :size]
    ys, xs = np.nonzero(chip.mask) if positive else ((), ())
    if len(ys):
        pick = rng.integers(len(ys))
        top = int(np.clip(ys[pick] - rng.integers(size), 0, height - size))
        left = int(np.clip(xs[pick] - rng.integers(size), 0, width - size))
    else:
        top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
    return chip.image[top:top + size, left:left + size], chip.mask[top:top + size, left:left + size]


def augment(image: np.ndarray, mask: np.ndarray, config: TrainConfig, rng: np.random.Generator):
    """The seed's augmentation: flips and rotations, brightness/contrast/saturation jitter.

    Geometric changes apply to image and mask alike; radiometric ones to the image only.
    """
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image = image * (1 + rng.uniform(-config.brightness, config.brightness))
    mean = image.mean(axis=(0, 1), keepdims=True)
    image = mean + (image - mean) * (1 + rng.uniform(-config.contrast, config.contrast))
    gray = image.mean(axis=-1, keepdims=True)
    image = gray + (image - gray) * (1 + rng.uniform(-config.saturation, config.saturation))
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask)


def crops_per_epoch(chips: list[Chip], config: TrainConfig) -> int:
    """Steps per epoch that cover the training area about once."""
    if config.steps_per_epoch:
        return config.steps_per_epoch
    area = sum(c.mask.size for c in chips) / config.crop_size**2
    return max(1, math.ceil(area / config.batch_size))


def training_batches(chips: list[Chip], config: TrainConfig) -> Iterator[tuple[np.ndarray, ...]]:
    """Endless seeded batches of (image crops, mask crops[..., None]) for training."""
    rng = np.random.default_rng(config.seed)
    while True:
        images, masks = [], []
        for _ in range(config.batch_size):
            chip = chips[int(rng.integers(len(chips)))]
            positive = rng.random() < config.positive_crop_fraction
            image, mask = _random_crop(chip, config.crop_size, positive, rng)
            if config.augment:
                image, mask = augment(image, mask, config, rng)
            images.append(image)
            masks.append(mask)
        yield np.stack(images), np.stack(masks)[..., None].astype(np.float32)


def training_dataset(chips: list[Chip], config: TrainConfig):
    """tf.data pipeline over training_batches, prefetched."""
    import tensorflow as tf

    size = config.crop_size
    signature = (tf.TensorSpec((None, size, size, 3), tf.float32),
                 tf.TensorSpec((None, size, size, 1), tf.float32))
    dataset = tf.data.Dataset.from_generator(lambda: training_batches(chips, config),
                                             output_signature=signature)
    return dataset.prefetch(tf.data.AUTOTUNE)


def validation_batches(chips: list[Chip], multiple: int, batch_size: int = 2,
                       replicas: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Whole chips padded to the model's multiple, batched by size: chips of different sizes
    never share a batch, so validation chips need not all have one size.

    With several replicas (batch_size then a multiple of them) every batch splits evenly, one
    chip or more per replica: a replica given no chip fails in the U-Net's batch normalisation,
    and Keras builds a distributed model from a first batch that must split evenly (keras
    backend/tensorflow/trainer.py, _maybe_symbolic_build). So the last len(group) % replicas
    chips of each size are left out, and logged.

    Returns:
        [(images (N, H, W, 3) float32, masks (N, H, W, 1) float32)], chips of a size in order.

    Raises:
        ValueError: no size has as many chips as there are replicas.
    """
    by_shape: dict[tuple[int, ...], list[Chip]] = {}
    for chip in chips:
        by_shape.setdefault(chip.mask.shape, []).append(chip)
    batches = []
    for shape, group in by_shape.items():
        if left_out := group[len(group) - len(group) % replicas:]:
            logger.warning("validation on %d replicas leaves out %d chip(s) of size %s: %s",
                           replicas, len(left_out), shape, [c.chip_id for c in left_out])
            group = group[:len(group) - len(left_out)]
        for start in range(0, len(group), batch_size):
            batches.append(evaluation_arrays(group[start:start + batch_size], multiple))
    if chips and not batches:
        raise ValueError(f"validation on {replicas} replicas needs at least {replicas} "
                         f"validation chips of one size; sizes: {sorted(by_shape)}. Raise "
                         "data.val_fraction or train on fewer GPUs.")
    return batches


def validation_dataset(chips: list[Chip], multiple: int, batch_size: int = 2,
                       replicas: int = 1):
    """tf.data over validation_batches (height and width left open)."""
    import tensorflow as tf

    batches = validation_batches(chips, multiple, batch_size, replicas)
    signature = (tf.TensorSpec((None, None, None, 3), tf.float32),
                 tf.TensorSpec((None, None, None, 1), tf.float32))
    dataset = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=signature)
    # A known length, so Keras does not warn that the input "ran out of data" each epoch.
    return dataset.apply(tf.data.experimental.assert_cardinality(len(batches)))


def evaluation_arrays(chips: list[Chip], multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole chips padded to the model's multiple, stacked (all chips must share a size)."""
    images = np.stack([pad_to_multiple(c.image, multiple) for c in chips])
    masks = np.stack([pad_to_multiple(c.mask, multiple) for c in chips])[..., None]
    return images.astype(np.float32), masks.astype(np.float32)
