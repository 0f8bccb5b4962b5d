"""Each loss against values computed by hand, and each configured name compiled as that loss."""

import math

import numpy as np
import pytest

from tailseg.config import ModelConfig, TrainConfig
from tailseg.losses import get_loss
from tailseg.model import build_unet
from tailseg.train import compile_model

# Four pixels: two tailings (predicted 0.8 and 0.6), two background (0.3 and 0.1).
Y_TRUE = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
Y_PRED = np.array([0.8, 0.3, 0.6, 0.1], np.float32).reshape(1, 2, 2, 1)

BCE = -(math.log(0.8) + math.log(0.7) + math.log(0.6) + math.log(0.9)) / 4
# Soft Dice with smoothing 1: intersection 0.8 + 0.6, sums 2 (truth) + 1.8 (prediction).
DICE = 1 - (2 * 1.4 + 1) / (2 + 1.8 + 1)
# Focal: -alpha_t (1 - p_t)^2 log(p_t), alpha 0.75 for tailings and 0.25 for background,
# p_t = 0.8, 0.7, 0.6, 0.9.
FOCAL = -(0.75 * 0.2**2 * math.log(0.8) + 0.25 * 0.3**2 * math.log(0.7)
          + 0.75 * 0.4**2 * math.log(0.6) + 0.25 * 0.1**2 * math.log(0.9)) / 4
# Tversky (alpha 0.7 on false positives, beta 0.3 on false negatives, smoothing 1): soft counts
# TP 1.4, FP 0.3 + 0.1, FN 0.2 + 0.4.
TVERSKY = 1 - (1.4 + 1) / (1.4 + 0.7 * 0.4 + 0.3 * 0.6 + 1)
HAND = {"bce": BCE, "dice": DICE, "bce_dice": BCE + DICE, "focal": FOCAL,
        "focal_dice": FOCAL + DICE, "tversky": TVERSKY}


def _value(loss, y_true=Y_TRUE, y_pred=Y_PRED) -> float:
    # Keras reduces per-pixel losses by their mean; the same here for the plain functions.
    return float(np.mean(np.asarray(loss(y_true, y_pred))))


@pytest.mark.parametrize("name", sorted(HAND))
def test_each_loss_matches_its_hand_computed_value(name):
    assert _value(get_loss(name)) == pytest.approx(HAND[name], rel=1e-5)


def test_the_hand_values_tell_the_losses_apart():
    values = sorted(HAND.values())
    assert all(b - a > 1e-3 for a, b in zip(values, values[1:], strict=False))


def test_dice_is_pooled_over_the_batch_and_perfect_prediction_scores_zero():
    assert _value(get_loss("dice"), Y_TRUE, Y_TRUE) == pytest.approx(0.0, abs=1e-7)
    # A chip without tailings predicted empty: smoothing makes this perfect, not 0/0.
    empty = np.zeros_like(Y_TRUE)
    assert _value(get_loss("dice"), empty, empty) == pytest.approx(0.0, abs=1e-7)
    batch_true = np.concatenate([Y_TRUE, empty])
    batch_pred = np.concatenate([Y_PRED, np.full_like(Y_PRED, 0.5)])
    pooled = 1 - (2 * 1.4 + 1) / (2 + 1.8 + 2.0 + 1)
    assert _value(get_loss("dice"), batch_true, batch_pred) == pytest.approx(pooled, rel=1e-5)


@pytest.mark.parametrize("name", sorted(HAND))
def test_compile_model_uses_the_configured_loss(name):
    model = build_unet(ModelConfig(base_filters=2, depth=1, dropout=0), np.zeros(3), np.ones(3))
    compile_model(model, TrainConfig(loss=name))
    assert _value(model.loss) == pytest.approx(HAND[name], rel=1e-5)


def test_unknown_loss_is_an_error():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")  # type: ignore[arg-type]


def test_tversky_uses_both_configured_weights():
    # alpha 0.7 on the 0.4 false positives, beta 0.9 on the 0.6 false negatives.
    expected = 1 - (1.4 + 1) / (1.4 + 0.7 * 0.4 + 0.9 * 0.6 + 1)
    assert _value(get_loss("tversky", 0.7, 0.9)) == pytest.approx(expected, rel=1e-5)
