"""The Lovasz loss: equal to 1 - IoU on hard predictions, hand-computed on soft ones, a working
gradient, and its names reaching the compiled model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tailseg.config import ModelConfig, TrainConfig
from tailseg.losses import get_loss, lovasz_loss, power_jaccard_loss
from tailseg.metrics import confusion, scores
from tailseg.model import build_unet
from tailseg.train import compile_model


@pytest.mark.parametrize("seed", range(5))
def test_lovasz_equals_one_minus_iou_on_hard_predictions(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random((2, 9, 7, 1)) < 0.2).astype(np.float32)
    predicted = (rng.random((2, 9, 7, 1)) < 0.3).astype(np.float32)
    iou = scores(confusion(truth == 1, predicted == 1))["iou"]
    assert float(lovasz_loss(truth, predicted)) == pytest.approx(1 - iou, abs=1e-6)


def test_lovasz_matches_its_hand_computed_value():
    # Pixels (truth, p): (1, 0.8), (0, 0.3), (1, 0.6), (0, 0.1); errors 0.2, 0.3, 0.4, 0.1.
    # Decreasing errors 0.4 (fg), 0.3 (bg), 0.2 (fg), 0.1 (bg); with 2 positives the Jaccard
    # loss after each step is 1 - 1/2, 1 - 1/3, 1 - 0/3, 1 - 0/4 = 0.5, 0.667, 1, 1, so the
    # weights are 0.5, 0.1667, 0.3333, 0 and the loss 0.2 + 0.05 + 0.0667 + 0 = 0.31667.
    truth = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
    probability = np.array([0.8, 0.3, 0.6, 0.1], np.float32).reshape(1, 2, 2, 1)
    assert float(lovasz_loss(truth, probability)) == pytest.approx(0.31667, abs=1e-5)


@pytest.mark.parametrize("loss_function", [lovasz_loss, power_jaccard_loss])
def test_overlap_loss_gradients_lower_the_loss(loss_function):
    # Lovasz and power Jaccard: plain gradient steps on the logits halve the loss.
    rng = np.random.default_rng(0)
    truth = tf.constant((rng.random((1, 8, 8, 1)) < 0.3).astype(np.float32))
    logits = tf.Variable(rng.standard_normal((1, 8, 8, 1)).astype(np.float32))
    first = None
    for _ in range(100):
        with tf.GradientTape() as tape:
            loss = loss_function(truth, tf.sigmoid(logits))
        first = float(loss) if first is None else first
        logits.assign_sub(20.0 * tape.gradient(loss, logits))
    assert float(loss_function(truth, tf.sigmoid(logits))) < first / 2


@pytest.mark.parametrize("name", ["lovasz", "bce_lovasz"])
def test_lovasz_losses_reach_the_compiled_model(name):
    truth = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
    probability = np.array([0.8, 0.3, 0.6, 0.1], np.float32).reshape(1, 2, 2, 1)
    model = build_unet(ModelConfig(base_filters=2, depth=1, dropout=0), np.zeros(3), np.ones(3))
    compile_model(model, TrainConfig(loss=name))
    bce = float(keras.losses.binary_crossentropy(truth, probability).numpy().mean())
    expected = 0.31667 + (bce if name == "bce_lovasz" else 0.0)
    assert float(np.mean(model.loss(truth, probability))) == pytest.approx(expected, abs=1e-4)
    assert get_loss(name) is not None
