"""Test-time augmentation: the flip average on hand-made predictors and on a real U-Net."""

import numpy as np
import pytest

from tailseg.config import ModelConfig
from tailseg.model import build_unet
from tailseg.tta import flip_tta

IMAGES = np.random.default_rng(0).uniform(0, 0.3, (2, 8, 12, 3)).astype(np.float32)


def test_a_pixelwise_predictor_is_unchanged():
    def pixelwise(x):
        return x[..., :1] * 2

    assert flip_tta(pixelwise)(IMAGES) == pytest.approx(pixelwise(IMAGES))


def test_a_position_bias_is_averaged_out():
    # A predictor that says "tailings on the right": 0 at the left column, 1 at the right.
    def biased(x):
        ramp = np.linspace(0, 1, x.shape[2], dtype=np.float32)
        return np.broadcast_to(ramp[None, None, :, None], x.shape[:3] + (1,))

    assert flip_tta(biased)(IMAGES) == pytest.approx(np.full((2, 8, 12, 1), 0.5))


def test_tta_of_a_unet_is_flip_equivariant():
    model = build_unet(ModelConfig(base_filters=2, depth=2, dropout=0), np.full(3, 0.15),
                       np.full(3, 0.1))
    images = np.random.default_rng(1).uniform(0, 0.3, (1, 16, 16, 3)).astype(np.float32)
    tta = flip_tta(lambda x: model.predict(x, verbose=0))
    flipped = tta(images[:, :, ::-1])[:, :, ::-1]
    assert flipped == pytest.approx(tta(images), abs=1e-6)
    plain = model.predict(images[:, :, ::-1], verbose=0)[:, :, ::-1]
    assert np.abs(plain - model.predict(images, verbose=0)).max() > 1e-4  # not so by itself
