"""Parity of an export's two formats: TensorFlow SavedModel vs ONNX Runtime on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tailseg.errors import ParityError


def max_abs_difference(saved_model_dir: str | Path, onnx_path: str | Path,
                       images: np.ndarray) -> float:
    """Largest |TF - ONNX| probability over images, run one image at a time (low memory)."""
    from tailseg.backends import load_onnx, load_tf

    tf_predictor, onnx_predictor = load_tf(saved_model_dir), load_onnx(onnx_path)
    largest = 0.0
    for image in np.asarray(images, np.float32):
        difference = np.abs(tf_predictor(image[None]) - onnx_predictor(image[None]))
        if not np.all(np.isfinite(difference)):
            return float("nan")
        largest = max(largest, float(difference.max()))
    return largest


def check_parity(saved_model_dir: str | Path, onnx_path: str | Path, images: np.ndarray,
                 tolerance: float = 1e-4) -> float:
    """Return the max absolute difference; raise ParityError above tolerance or if not finite."""
    if len(images) == 0:
        raise ValueError("parity check needs at least one image")
    difference = max_abs_difference(saved_model_dir, onnx_path, images)
    if not difference <= tolerance:  # also catches NaN
        raise ParityError(
            f"{onnx_path}: ONNX Runtime and TensorFlow ({saved_model_dir}) disagree on "
            f"{len(images)} images: max |difference| {difference:.3g} > tolerance {tolerance:g}"
            " (non-finite outputs count as disagreement); check the opset and the input images")
    return difference
