"""The Tversky loss against hand-computed values, its precision-recall trade, and its
configuration reaching the compiled model."""

import keras
import numpy as np
import pytest

from tailseg.config import ModelConfig, TrainConfig
from tailseg.losses import TverskyLoss, get_loss
from tailseg.model import build_unet
from tailseg.train import compile_model

# Four pixels: two tailings (predicted 0.8 and 0.6), two background (0.3 and 0.1).
Y_TRUE = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
Y_PRED = np.array([0.8, 0.3, 0.6, 0.1], np.float32).reshape(1, 2, 2, 1)
# Soft counts: TP = 0.8 + 0.6 = 1.4, FP = 0.3 + 0.1 = 0.4, FN = 0.2 + 0.4 = 0.6; smoothing 1.
HAND = {(0.7, 0.3): 1 - 2.4 / (1.4 + 0.7 * 0.4 + 0.3 * 0.6 + 1),  # 0.16084
        (0.5, 0.5): 1 - 2.4 / (1.4 + 0.5 * 0.4 + 0.5 * 0.6 + 1),  # 0.17241
        (0.0, 1.0): 1 - 2.4 / (1.4 + 0.6 + 1)}                    # recall only: 0.2


@pytest.mark.parametrize("weights", sorted(HAND))
def test_tversky_matches_its_hand_computed_value(weights):
    loss = get_loss("tversky", *weights)
    assert float(loss(Y_TRUE, Y_PRED)) == pytest.approx(HAND[weights], rel=1e-5)


def test_alpha_above_beta_punishes_a_false_tailings_pixel_more_than_a_missed_one():
    truth = np.array([1, 1, 0, 0], np.float32).reshape(1, 2, 2, 1)
    false_positive = np.array([1, 1, 1, 0], np.float32).reshape(1, 2, 2, 1)
    missed = np.array([1, 0, 0, 0], np.float32).reshape(1, 2, 2, 1)
    # 1 - 3 / (2 + 0.7 + 1) = 0.189 against 1 - 2 / (1 + 0.3 + 1) = 0.130.
    precise = TverskyLoss(0.7, 0.3)
    assert float(precise(truth, false_positive)) == pytest.approx(1 - 3 / 3.7, rel=1e-5)
    assert float(precise(truth, missed)) == pytest.approx(1 - 2 / 2.3, rel=1e-5)
    # Swapped weights swap the preference: 0.091 against 0.259.
    recalling = TverskyLoss(0.3, 0.7)
    assert float(recalling(truth, false_positive)) < float(recalling(truth, missed))


def test_compile_model_uses_the_configured_tversky_weights():
    model = build_unet(ModelConfig(base_filters=2, depth=1, dropout=0), np.zeros(3), np.ones(3))
    compile_model(model, TrainConfig(loss="tversky", tversky_alpha=0.0, tversky_beta=1.0))
    assert float(model.loss(Y_TRUE, Y_PRED)) == pytest.approx(HAND[(0.0, 1.0)], rel=1e-5)


def test_tversky_loss_survives_serialisation():
    restored = keras.losses.deserialize(keras.losses.serialize(TverskyLoss(0.6, 0.4)))
    assert (restored.alpha, restored.beta) == (0.6, 0.4)


def test_the_tversky_loss_defaults_weigh_false_tailings_most_and_survive_saving():
    loss = TverskyLoss()
    config = loss.get_config()
    assert (config["alpha"], config["beta"], config["name"]) == (0.7, 0.3, "tversky")
    assert TverskyLoss.from_config(config).get_config() == config
