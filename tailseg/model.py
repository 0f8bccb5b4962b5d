"""The U-Net, as a Keras Functional builder. Normalisation is the first layer, so the model
(and every export of it) takes raw top-of-atmosphere reflectance in band order B2, B3, B4."""

from __future__ import annotations

import re

import keras
import numpy as np
from keras import layers

from tailseg.config import ModelConfig
from tailseg.constants import BANDS
from tailseg.ensemble import members_of


def _conv_block(x, filters: int, config: ModelConfig, name: str):
    """Two 3x3 convolutions, each optionally batch-normalised, with ReLU."""
    for index in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not config.batch_norm,
                          kernel_initializer="he_normal", name=f"{name}_conv{index}")(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def build_unet(config: ModelConfig, band_mean: np.ndarray, band_std: np.ndarray) -> keras.Model:
    """Build the U-Net.

    Args:
        config: architecture (depth down-sampling steps, base filters doubling per step).
        band_mean: per-band reflectance mean of the training chips, used to normalise inputs.
        band_std: per-band reflectance standard deviation of the training chips.

    Returns:
        A model mapping reflectance (N, H, W, 3) to a tailings probability (N, H, W, 1);
        H and W must be multiples of config.multiple.
    """
    inputs = keras.Input(shape=(None, None, len(BANDS)), name="image")
    x = layers.Normalization(mean=np.asarray(band_mean, dtype="float32"),
                             variance=np.square(np.asarray(band_std, dtype="float32")),
                             name="normalise")(inputs)
    skips = []
    for level in range(config.depth):
        x = _conv_block(x, config.base_filters * 2**level, config, name=f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, config.base_filters * 2**config.depth, config, name="bottom")
    if config.dropout:
        x = layers.Dropout(config.dropout, name="bottom_dropout")(x)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, config, name=f"dec{level}")
        if config.dropout and level > 0:
            x = layers.Dropout(config.dropout, name=f"dec{level}_dropout")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name="tailseg_unet")


def model_multiple(model: keras.Model) -> int:
    """Input height and width must be multiples of this: 2 ** (number of poolings), the
    largest of an ensemble's members."""
    return max(2 ** sum(isinstance(layer, layers.MaxPooling2D) for layer in member.layers)
               for member in members_of(model))


def flops_per_pixel(model: keras.Model) -> float:
    """Forward-pass floating point operations per input pixel (2 per multiply-add).

    Counts the convolutions, which dominate. A layer at level l (after l poolings) sees
    1/4**l as many pixels as the input; a 2x2 stride-2 transposed convolution does one
    kernel tap per output pixel.
    """
    members = members_of(model)
    if len(members) > 1:  # an ensemble runs every member
        return sum(flops_per_pixel(member) for member in members)
    depth = sum(1 for layer in model.layers if layer.name.startswith("pool"))
    total = 0.0
    for layer in model.layers:
        if not isinstance(layer, layers.Conv2D | layers.Conv2DTranspose):
            continue
        kh, kw, a, b = layer.kernel.shape
        level = _level(layer.name, depth)
        if isinstance(layer, layers.Conv2DTranspose):
            macs = a * b  # output level; stride equals kernel size, so one tap per output pixel
        else:
            macs = kh * kw * a * b
        total += 2.0 * macs / 4**level
    return total


def _level(name: str, depth: int) -> int:
    """Resolution level of a layer from its name (see build_unet)."""
    if name.startswith("bottom"):
        return depth
    match = re.match(r"^(down|dec|up)(\d+)", name)
    return int(match.group(2)) if match else 0
