"""Pairing, loading with exclusion reasons, deterministic split, and augmentation."""

import numpy as np
import pytest

from tailseg.config import DataConfig, TrainConfig
from tailseg.dataset import (
    augment,
    find_pairs,
    load_chips,
    require_pairs,
    split_ids,
    training_batches,
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


def test_split_is_deterministic_disjoint_and_complete():
    ids = [f"chip_{i:03d}" for i in range(40)]
    config = DataConfig(seed=7)
    first, second = split_ids(ids, config), split_ids(list(reversed(ids)), config)
    assert first == second
    parts = [set(first[k]) for k in ("train", "val", "test")]
    assert set().union(*parts) == set(ids) and sum(len(p) for p in parts) == len(ids)
    assert split_ids(ids, DataConfig(seed=8)) != first


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
