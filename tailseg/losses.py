"""Losses for a rare foreground class (tailings cover ~3 % of pixels)."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from tailseg.config import LossName

SMOOTH = 1.0


def dice_loss(y_true, y_pred):
    """Soft Dice loss pooled over the batch: 1 - 2|A.B| / (|A| + |B|)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    intersection = ops.sum(y_true * y_pred)
    total = ops.sum(y_true) + ops.sum(y_pred)
    return 1.0 - (2.0 * intersection + SMOOTH) / (total + SMOOTH)


def bce_dice_loss(y_true, y_pred):
    return keras.losses.binary_crossentropy(y_true, y_pred) + dice_loss(y_true, y_pred)


_FOCAL = keras.losses.BinaryFocalCrossentropy(gamma=2.0, apply_class_balancing=True, alpha=0.75)


def focal_loss(y_true, y_pred):
    return _FOCAL(y_true, y_pred)


def focal_dice_loss(y_true, y_pred):
    return _FOCAL(y_true, y_pred) + dice_loss(y_true, y_pred)


def lovasz_loss(y_true, y_pred):
    """Lovasz extension of the Jaccard loss of the tailings class (Berman et al. 2018, the
    Lovasz-softmax form on probabilities), pooled over the batch.

    Pixel errors |y - p| are sorted in decreasing order and weighted by the increments of the
    Jaccard loss 1 - |A n B| / |A u B| along that order (a gradient of the sort, not through it).
    On hard predictions it equals 1 - IoU exactly, so it optimises the reported metric itself.
    """
    truth = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1,))
    errors = ops.abs(truth - ops.reshape(y_pred, (-1,)))
    order = ops.flip(ops.argsort(errors), 0)  # decreasing error
    errors_sorted, truth_sorted = ops.take(errors, order), ops.take(truth, order)
    positives = ops.sum(truth_sorted)
    intersection = positives - ops.cumsum(truth_sorted)
    union = positives + ops.cumsum(1.0 - truth_sorted)
    jaccard = 1.0 - intersection / union
    weights = ops.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return ops.sum(errors_sorted * ops.stop_gradient(weights))


def bce_lovasz_loss(y_true, y_pred):
    return keras.losses.binary_crossentropy(y_true, y_pred) + lovasz_loss(y_true, y_pred)


POWER = 2.0


def power_jaccard_loss(y_true, y_pred):
    """Power Jaccard loss (Duque-Arias et al. 2021), pooled over the batch:
    1 - (|A.B| + 1) / (sum(y^p) + sum(p^p) - |A.B| + 1) with power p = 2. Squaring the
    probabilities in the union makes a confident prediction count fully and a hesitant one
    little, so, unlike the soft Jaccard, the loss does not reward spreading low probability over
    the background. On hard predictions it equals 1 - IoU (up to the smoothing term)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    intersection = ops.sum(y_true * y_pred)
    union = ops.sum(ops.power(y_true, POWER)) + ops.sum(ops.power(y_pred, POWER)) - intersection
    return 1.0 - (intersection + SMOOTH) / (union + SMOOTH)


def bce_power_jaccard_loss(y_true, y_pred):
    return keras.losses.binary_crossentropy(y_true, y_pred) + power_jaccard_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="tailseg")
class TverskyLoss(keras.losses.Loss):
    """1 - Tversky index, pooled over the batch like the Dice loss:
    (TP + 1) / (TP + alpha FP + beta FN + 1) with soft counts TP = sum(y p),
    FP = sum((1 - y) p), FN = sum(y (1 - p)). alpha = beta = 0.5 is a soft Dice; alpha > beta
    penalises false tailings more than missed ones (Salehi et al. 2017)."""

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, name: str = "tversky", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.beta = float(alpha), float(beta)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        tp = ops.sum(y_true * y_pred)
        fp = ops.sum((1.0 - y_true) * y_pred)
        fn = ops.sum(y_true * (1.0 - y_pred))
        return 1.0 - (tp + SMOOTH) / (tp + self.alpha * fp + self.beta * fn + SMOOTH)

    def get_config(self) -> dict:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


def get_loss(name: LossName, tversky_alpha: float = 0.7, tversky_beta: float = 0.3
             ) -> Callable:
    """The loss function for a configured name (the Tversky weights apply to "tversky")."""
    match name:
        case "bce":
            return keras.losses.BinaryCrossentropy()
        case "dice":
            return dice_loss
        case "bce_dice":
            return bce_dice_loss
        case "focal":
            return focal_loss
        case "focal_dice":
            return focal_dice_loss
        case "tversky":
            return TverskyLoss(tversky_alpha, tversky_beta)
        case "lovasz":
            return lovasz_loss
        case "bce_lovasz":
            return bce_lovasz_loss
        case "power_jaccard":
            return power_jaccard_loss
        case "bce_power_jaccard":
            return bce_power_jaccard_loss
    raise ValueError(f"unknown loss {name!r}")
