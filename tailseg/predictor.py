"""The one call every model backend offers: reflectance (N, H, W, 3) -> probability (N, H, W, 1).

Its own module so that the in-process backends (tailseg.backends) and the model server clients
(tailseg.serving.client) both build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Predictor:
    """A loaded model. predict takes float32 reflectance and returns probabilities."""

    predict: Callable[[np.ndarray], np.ndarray]
    backend: str
    path: Path | str  # a str for server URLs
    metadata: dict = field(default_factory=dict)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.predict(np.asarray(images, dtype=np.float32))
