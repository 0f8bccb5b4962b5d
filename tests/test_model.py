"""The U-Net: architecture of the seed, shapes, FLOPs, and behaviour after a little training."""

import numpy as np
import pytest
from keras import layers

from tailseg.config import MODEL_PRESETS, ModelConfig, TrainConfig
from tailseg.dataset import load_chips, require_pairs
from tailseg.model import build_unet, flops_per_pixel
from tailseg.train import train_model
from tests.rasters import make_dataset

MEAN, STD = np.full(3, 0.1), np.full(3, 0.05)


def test_seed_preset_has_ten_3x3_convolutions_doubling_from_64_to_256():
    model = build_unet(MODEL_PRESETS["seed"], MEAN, STD)
    convs = [layer for layer in model.layers
             if isinstance(layer, layers.Conv2D) and layer.kernel_size == (3, 3)]
    assert len(convs) == 10
    assert sorted({c.filters for c in convs}) == [64, 128, 256]
    assert any(isinstance(layer, layers.Conv2DTranspose) for layer in model.layers)
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_output_is_a_probability_map_of_the_input_size():
    model = build_unet(ModelConfig(base_filters=2, depth=3), MEAN, STD)
    x = np.random.default_rng(0).uniform(0, 0.5, (2, 24, 40, 3)).astype(np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 24, 40, 1) and (0 <= y).all() and (y <= 1).all()


def test_flops_per_pixel_matches_a_hand_count():
    config = ModelConfig(base_filters=4, depth=1, batch_norm=False, dropout=0)
    # down0: 3->4, 4->4; bottom (1/4 pixels): 4->8, 8->8; up0: 8->4 (one tap);
    # dec0: 8->4, 4->4; head: 4->1.
    expected = 2 * (9 * 3 * 4 + 9 * 4 * 4 + (9 * 4 * 8 + 9 * 8 * 8) / 4 + 8 * 4
                    + 9 * 8 * 4 + 9 * 4 * 4 + 4)
    assert flops_per_pixel(build_unet(config, MEAN, STD)) == pytest.approx(expected)


def test_a_short_training_learns_bright_tailings_and_ignores_plain_vegetation(tmp_path):
    chips, _ = load_chips(require_pairs(make_dataset(tmp_path, n_chips=6, size=32, seed=1)))
    config = TrainConfig(epochs=12, steps_per_epoch=6, batch_size=4, crop_size=32,
                         learning_rate=1e-2, verbose=0, early_stopping_patience=12)
    result = train_model(chips[:5], chips[5:], ModelConfig(base_filters=4, dropout=0), config)
    assert max(result.history["val_iou"]) > 0.5
    vegetation = np.full((1, 32, 32, 3), [0.04, 0.07, 0.05], np.float32)
    assert result.model.predict(vegetation, verbose=0).max() < 0.5
    flipped = chips[5].image[:, ::-1][None]
    a = result.model.predict(flipped, verbose=0)[0, ..., 0] > 0.5
    b = result.model.predict(chips[5].image[None], verbose=0)[0, ..., 0][:, ::-1] > 0.5
    assert np.mean(a == b) > 0.95  # flipping a chip flips its prediction
