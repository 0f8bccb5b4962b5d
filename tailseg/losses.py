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


def get_loss(name: LossName) -> Callable:
    """The loss function for a configured name."""
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
    raise ValueError(f"unknown loss {name!r}")
