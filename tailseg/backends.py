"""Model backends behind one call: reflectance (N, H, W, 3) -> probability (N, H, W, 1).

A model path is resolved by what it holds:
- a SavedModel directory (saved_model.pb inside) -> TensorFlow;
- a TF Serving model base path (integer version sub-directories) -> its latest version;
- a file ending in .onnx -> ONNX Runtime;
- a model server URL (grpc://HOST:PORT/NAME or http://HOST:PORT/v1/models/NAME, optionally
  /versions/V or /labels/L) -> a TF Serving(-compatible) server through tailseg.serving.client.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from tailseg.errors import ModelFormatError
from tailseg.export import (
    INPUT_NAME,
    METADATA_FILE,
    ONNX_METADATA_KEY,
    OUTPUT_NAME,
    SIGNATURE,
    existing_versions,
)
from tailseg.predictor import Predictor

BackendName = Literal["tf", "onnx"]
logger = logging.getLogger(__name__)


def resolve_saved_model(path: str | Path) -> Path:
    """The SavedModel directory for a SavedModel path or a TF Serving base path (latest)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = existing_versions(path)
    for version in reversed(versions):
        if (path / str(version) / "saved_model.pb").is_file():
            return path / str(version)
    raise ModelFormatError(
        f"{path}: not a SavedModel (no saved_model.pb), a TF Serving base path (no integer "
        "version directory with a SavedModel) or an .onnx file")


def read_metadata(saved_model_dir: Path) -> dict:
    """The tailseg metadata written beside the SavedModel at export, or {}.

    Raises:
        ModelFormatError: the file is not a JSON object or its threshold is not in (0, 1).
    """
    path = Path(saved_model_dir) / "assets.extra" / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFormatError(f"{path}: the model's metadata cannot be read ({error})") from error
    return parse_metadata(text, str(path))


def parse_metadata(text: str, source: str) -> dict:
    """Model metadata from its JSON text, checked: an object whose "threshold", if given, is a
    number between 0 and 1 (one outside would make every pixel tailings or none).

    Raises:
        ModelFormatError: naming source (the file, or the file and its field) and the problem.
    """
    fix = "re-export the model or repair its metadata"
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelFormatError(f"{source} is not JSON ({error}); {fix}") from error
    if not isinstance(metadata, dict):
        raise ModelFormatError(f"{source} is {type(metadata).__name__}, not a JSON object; {fix}")
    threshold = metadata.get("threshold", 0.5)
    if (isinstance(threshold, bool) or not isinstance(threshold, int | float)
            or not 0.0 < threshold < 1.0):
        raise ModelFormatError(f"{source} has threshold {threshold!r}, not a number between 0 "
                               f"and 1; {fix}, or pass --threshold")
    return metadata


def load_tf(path: str | Path) -> Predictor:
    import tensorflow as tf

    directory = resolve_saved_model(path)
    metadata = read_metadata(directory)  # before the slow load: a bad file fails at once
    loaded = tf.saved_model.load(str(directory))
    if SIGNATURE not in loaded.signatures:
        raise ModelFormatError(f"{directory}: SavedModel has no {SIGNATURE!r} signature")
    signature = loaded.signatures[SIGNATURE]

    def predict(images: np.ndarray) -> np.ndarray:
        return signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()

    predictor = Predictor(predict, "tf", directory, metadata)
    predictor.keepalive = loaded  # type: ignore[attr-defined]  # the signature needs it alive
    return predictor


def load_onnx(path: str | Path, threads: int | None = None) -> Predictor:
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: ONNX file not found")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelFormatError(f"{path}: not a loadable ONNX model ({error})") from error
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    wanted = next((n for n in output_names if OUTPUT_NAME in n), output_names[0])

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run([wanted], {input_name: images})[0]

    return Predictor(predict, "onnx", path, _onnx_metadata(path, session))


def _onnx_metadata(path: Path, session) -> dict:
    """The tailseg metadata in the model's metadata_props; for a file exported before it was
    embedded, that of the SavedModel beside it (exports/onnx/<name>/<v>/model.onnx ->
    exports/serving/<name>/<v>/); else {} with a warning, as the threshold falls back to 0.5."""
    embedded = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    if embedded:
        return parse_metadata(embedded, f"{path}: metadata_props[{ONNX_METADATA_KEY!r}]")
    parents = path.resolve().parents
    candidate = (parents[3] / "serving" / parents[1].name / parents[0].name
                 if len(parents) > 3 else None)
    if candidate is not None and candidate.is_dir():
        return read_metadata(candidate)
    logger.warning("%s: carries no tailseg metadata, so its decision threshold is unknown; "
                   "0.5 is used unless --threshold is given", path)
    return {}


def load_predictor(path: str | Path, backend: BackendName | None = None) -> Predictor:
    """Load a model path with the backend its contents call for (or the one given)."""
    if isinstance(path, str) and path.startswith(("grpc://", "http://", "https://")):
        from tailseg.serving.client import client_from_url

        return client_from_url(path).as_predictor()
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"{path}: model path not found")
    if backend is None:
        backend = "onnx" if path.suffix.lower() == ".onnx" else "tf"
    match backend:
        case "onnx":
            if path.is_dir():
                versioned = [p for p in path.glob("*/model.onnx") if p.parent.name.isdigit()]
                onnx_files = sorted(path.glob("*.onnx")) or sorted(
                    versioned, key=lambda p: int(p.parent.name))
                if not onnx_files:
                    raise ModelFormatError(f"{path}: no .onnx file inside")
                path = onnx_files[-1]
            return load_onnx(path)
        case "tf":
            return load_tf(path)
    raise ModelFormatError(f"unknown backend {backend!r}; use 'tf', 'onnx' or a serving URL")
