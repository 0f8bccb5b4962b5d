"""Pairing, loading with exclusion reasons, and augmentation (the split: test_split.py)."""

import numpy as np
import pytest

from tailseg.config import TrainConfig
from tailseg.dataset import (
    augment,
    find_pairs,
    load_chips,
    require_pairs,
    training_batches,
    validation_batches,
)
from tailseg.errors import DatasetNotFoundError, PairingError
from tests.rasters import make_dataset, write_mask


def test_pairs_by_file_name_and_names_unpaired_files(tmp_path):
    root = make_dataset(tmp_path, n_chips=4, size=16)
    (root / "masks" / "chip_001.tif").unlink()
    write_mask(root / "masks" / "orphan.tif", np.zeros((16, 16), np.uint8))
    pairs, unpaired = find_pairs(root)
    assert [p.chip_id for p in pairs] == ["chip_000", "chip_002", "chip_003"]
    assert "image has no mask" in unpaired["chip_001"] and "chip_001.tif" in unpaired["chip_001"]
    assert "mask has no image" in unpaired["orphan"]
    with pytest.raises(PairingError, match="orphan.tif"):
        require_pairs(root)


def test_missing_dataset_folder_is_named(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="images"):
        find_pairs(tmp_path)


def test_bundled_truncated_chip_is_excluded_with_its_reason(bundled_data):
    pairs = [p for p in require_pairs(bundled_data) if p.chip_id in ("chip_022", "chip_023")]
    chips, excluded = load_chips(pairs)
    assert [c.chip_id for c in chips] == ["chip_022"]
    assert "48 x 448" in excluded["chip_023"] and "chip_023.tif" in excluded["chip_023"]
    assert chips[0].image.dtype == np.float32 and 0.0 < chips[0].image.mean() < 0.6


def test_a_mask_wrong_before_the_cast_excludes_its_chip_naming_file_and_values(tmp_path):
    root = make_dataset(tmp_path, n_chips=3, size=16)
    mask = np.zeros((16, 16), np.uint16)
    mask[4:8, 4:8] = 256  # 0 after a cast to uint8: a chip with no tailings, scored as such
    write_mask(root / "masks" / "chip_001.tif", mask, dtype="uint16")
    chips, excluded = load_chips(require_pairs(root))
    assert [c.chip_id for c in chips] == ["chip_000", "chip_002"]
    assert "chip_001.tif" in excluded["chip_001"] and "[256]" in excluded["chip_001"]


def test_bundled_masks_all_load_as_0_and_1(bundled_data):
    chips, excluded = load_chips(require_pairs(bundled_data))
    assert list(excluded) == ["chip_023"]  # the truncated export, see its README
    assert all(set(np.unique(c.mask)) <= {0, 1} and c.mask.dtype == np.uint8 for c in chips)


def test_augmentation_moves_mask_with_image():
    rng = np.random.default_rng(0)
    image = np.zeros((8, 8, 3), np.float32)
    image[0, 0] = 1.0
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 0] = 1
    config = TrainConfig(brightness=0, contrast=0, saturation=0)
    for _ in range(8):
        out_image, out_mask = augment(image, mask, config, rng)
        assert np.array_equal(out_image[..., 0] > 0.5, out_mask == 1)


def test_training_batches_are_seeded_and_biased_to_tailings(tmp_path):
    chips, _ = load_chips(require_pairs(make_dataset(tmp_path, n_chips=3, size=32)))
    config = TrainConfig(batch_size=4, crop_size=16, positive_crop_fraction=1.0, augment=False)
    x1, y1 = next(training_batches(chips, config))
    x2, y2 = next(training_batches(chips, config))
    assert x1.shape == (4, 16, 16, 3) and y1.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(x1, x2)
    assert all(crop.any() for crop in y1)


def _is_window_of(crop: np.ndarray, chips) -> bool:
    size = crop.shape[0]
    return any(np.array_equal(chip.image[top:top + size, left:left + size], crop)
               for chip in chips
               for top in range(chip.image.shape[0] - size + 1)
               for left in range(chip.image.shape[1] - size + 1))


def test_augmentation_is_applied_when_on_and_not_when_off(tmp_path):
    chips, _ = load_chips(require_pairs(make_dataset(tmp_path, n_chips=2, size=24)))
    plain = TrainConfig(batch_size=8, crop_size=16, augment=False)
    images, _ = next(training_batches(chips, plain))
    assert all(_is_window_of(crop, chips) for crop in images)
    augmented, _ = next(training_batches(chips, plain.model_copy(update={"augment": True})))
    assert sum(not _is_window_of(crop, chips) for crop in augmented) >= 6


def test_augmentation_is_on_by_default_and_in_the_shipped_configuration(bundled_data):
    from tailseg.config import load_run_yaml, parse_config

    assert TrainConfig().augment
    shipped = load_run_yaml(bundled_data.parent.parent / "zenml.yaml")
    assert parse_config(shipped["parameters"]["config"]).training.augment


def test_tailings_crops_contain_tailings_anywhere_not_only_at_the_centre(tmp_path):
    chips, _ = load_chips(require_pairs(make_dataset(tmp_path, n_chips=3, size=48)))
    config = TrainConfig(batch_size=32, crop_size=16, positive_crop_fraction=1.0, augment=False)
    _, masks = next(training_batches(chips, config))
    assert all(mask.any() for mask in masks)
    assert not all(mask[8, 8, 0] for mask in masks)  # crops contain tailings, not centred on them


def test_validation_batches_split_evenly_over_replicas(tmp_path):
    # Risk: on several GPUs a replica given no chip fails in batch normalisation, and Keras
    # builds the distributed model from a first batch that must split evenly.
    small, _ = load_chips(require_pairs(make_dataset(tmp_path / "a", n_chips=5, size=16)))
    large, _ = load_chips(require_pairs(make_dataset(tmp_path / "b", n_chips=1, size=32)))
    assert [len(images) for images, _ in validation_batches(small + large, 16, 2)] == [2, 2, 1, 1]
    assert [len(images) for images, _ in validation_batches(small + large, 16, 4, 2)] == [4]
    with pytest.raises(ValueError, match="at least 2 validation chips of one size"):
        validation_batches(large, 16, 4, 2)
