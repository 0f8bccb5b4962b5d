"""Test-time augmentation: the mean prediction over flipped copies of the input.

The U-Net is trained on flipped and rotated crops, but it is not exactly flip-equivariant;
averaging the four flips (none, left-right, up-down, both) removes that asymmetry and usually
smooths noisy false positives, at four times the prediction cost. An evaluation and
cross-validation option (`tailseg evaluate --tta`, `tailseg cv --tta`); the exported serving
function does not include it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (1, 2))  # flipped axes of (N, H, W, C)


def flip_tta(predict: PredictFn) -> PredictFn:
    """A predict function returning the mean of predict over the four flips of its input."""

    def averaged(images: np.ndarray) -> np.ndarray:
        total = None
        for axes in FLIPS:
            flipped = np.ascontiguousarray(np.flip(images, axes)) if axes else images
            output = np.asarray(predict(flipped), dtype=np.float32)
            output = np.flip(output, axes) if axes else output
            total = output if total is None else total + output
        return total / len(FLIPS)

    return averaged
