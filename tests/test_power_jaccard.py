"""The power Jaccard loss: 1 - IoU on hard predictions (with its smoothing term), its
hand-computed value on soft ones (which tells p = 2 from the plain soft Jaccard), a working
gradient, and its names reaching the compiled model."""

import keras
import numpy as np
import pytest

from tailseg.config import ModelConfig, TrainConfig
from tailseg.losses import get_loss, power_jaccard_loss
from tailseg.metrics import confusion
from tailseg.model import build_unet
from tailseg.train import compile_model

TRUTH = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
PROBABILITY = np.array([0.8, 0.3, 0.6, 0.1], np.float32).reshape(1, 2, 2, 1)
# Intersection 0.8 + 0.6 = 1.4; sum(y^2) = 2; sum(p^2) = 0.64 + 0.09 + 0.36 + 0.01 = 1.1;
# union 2 + 1.1 - 1.4 = 1.7; loss 1 - (1.4 + 1) / (1.7 + 1) = 0.11111. (Power 1, the soft
# Jaccard, would give union 2.4 and loss 0.29412.)
HAND = 1 - 2.4 / 2.7


@pytest.mark.parametrize("seed", range(5))
def test_power_jaccard_equals_one_minus_smoothed_iou_on_hard_predictions(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random((2, 9, 7, 1)) < 0.2).astype(np.float32)
    predicted = (rng.random((2, 9, 7, 1)) < 0.3).astype(np.float32)
    counts = confusion(truth == 1, predicted == 1)
    union = counts.tp + counts.fp + counts.fn
    expected = 1 - (counts.tp + 1) / (union + 1)
    assert float(power_jaccard_loss(truth, predicted)) == pytest.approx(expected, abs=1e-6)


def test_power_jaccard_matches_its_hand_computed_value():
    assert float(power_jaccard_loss(TRUTH, PROBABILITY)) == pytest.approx(HAND, abs=1e-6)


@pytest.mark.parametrize("name", ["power_jaccard", "bce_power_jaccard"])
def test_power_jaccard_losses_reach_the_compiled_model(name):
    model = build_unet(ModelConfig(base_filters=2, depth=1, dropout=0), np.zeros(3), np.ones(3))
    compile_model(model, TrainConfig(loss=name))
    bce = float(keras.losses.binary_crossentropy(TRUTH, PROBABILITY).numpy().mean())
    expected = HAND + (bce if name == "bce_power_jaccard" else 0.0)
    assert float(np.mean(model.loss(TRUTH, PROBABILITY))) == pytest.approx(expected, abs=1e-4)
    assert get_loss(name) is not None
