"""One loaded model version: its signatures checked against the serving contract, warmed up,
and run in sub-batches on checked images.

Two signatures (tailseg.export): "serving_default" takes float32 images; "serving_bytes", when
the version has it, takes each image's raw float32 bytes with its height and width. Both decode
to the same checked images here, so admission control, batching and deadlines treat them alike;
a "serving_bytes" request then runs that signature's own graph, which decodes the bytes again
(the Python decode is for TF Serving's errors before any work: the graph refuses the same
requests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorflow.core.framework.types_pb2 import DT_INT32, DataType

from tailseg.errors import ModelFormatError, ServingRequestError
from tailseg.export import (
    BYTES_INPUTS,
    BYTES_SIGNATURE,
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE,
    read_signature_defs,
)
from tailseg.serving.limits import check_alive
from tailseg.serving.protocol import (
    bytes_images,
    check_image,
    from_tensor_proto,
    raw_images,
    strings_from_tensor_proto,
)
from tailseg.serving.warmup import read_warmup_requests

CONTRACTS = {  # signature -> inputs / outputs -> name -> (dtype name, shape)
    SIGNATURE: {"inputs": {INPUT_NAME: ("DT_FLOAT", [-1, -1, -1, 3])},
                "outputs": {OUTPUT_NAME: ("DT_FLOAT", [-1, -1, -1, 1])}},
    BYTES_SIGNATURE: {"inputs": {BYTES_INPUTS[0]: ("DT_STRING", [-1]),
                                 BYTES_INPUTS[1]: ("DT_INT32", [-1]),
                                 BYTES_INPUTS[2]: ("DT_INT32", [-1])},
                      "outputs": {OUTPUT_NAME: ("DT_FLOAT", [-1, -1, -1, 1])}},
}


def check_signature(saved_model_dir: Path, signature_defs: dict) -> None:
    """Names, dtypes and shapes of serving_default (required) and serving_bytes (if present)
    against the serving contract."""
    from tensorflow.core.framework import types_pb2

    if SIGNATURE not in signature_defs:
        raise ModelFormatError(f"{saved_model_dir}: no {SIGNATURE!r} signature "
                               f"(has {sorted(signature_defs)})")
    for key in (key for key in CONTRACTS if key in signature_defs):
        for kind, expected in CONTRACTS[key].items():
            tensors = getattr(signature_defs[key], kind)
            if sorted(tensors) != sorted(expected):
                raise ModelFormatError(f"{saved_model_dir}: {key} {kind} are {sorted(tensors)};"
                                       f" the serving contract needs {sorted(expected)}")
            for name, (dtype, shape) in expected.items():
                info = tensors[name]
                actual = [d.size for d in info.tensor_shape.dim]
                if types_pb2.DataType.Name(info.dtype) != dtype or actual != shape:
                    raise ModelFormatError(
                        f"{saved_model_dir}: {key} {name!r} is "
                        f"{types_pb2.DataType.Name(info.dtype)} {actual}; expected {dtype} {shape}")


def _through_bytes(function: Callable) -> Callable:
    """A serving_bytes signature called like serving_default: float32 images in."""
    import tensorflow as tf

    def call(image):
        images = image.numpy()
        count, height, width, _ = images.shape
        return function(**dict(zip(BYTES_INPUTS, (
            tf.constant(raw_images(images)),
            tf.fill([count], height), tf.fill([count], width)), strict=True)))

    return call


@dataclass
class LoadedVersion:
    """One loaded, warmed-up version, or its view through another signature (serving())."""

    name: str
    version: int
    path: Path
    signature_defs: dict
    function: object
    keepalive: object = None
    signature: str = SIGNATURE
    base: LoadedVersion | None = None  # set on a view: the version it views
    _views: dict = field(default_factory=dict, repr=False)
    _views_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def serving(self, signature: str | None) -> LoadedVersion:
        """This version as the named signature runs it (the same object for each name, so the
        batcher keeps one queue per version and signature).

        Raises:
            ServingRequestError: the version has no such signature (INVALID_ARGUMENT with the
                words of TF Serving's REST handler; gRPC answers its own words first).
        """
        if self.base is not None:
            return self.base.serving(signature)
        signature = signature or SIGNATURE
        if signature not in self.signature_defs or signature not in CONTRACTS:
            raise ServingRequestError(f"Serving signature name: {signature!r} not found in "
                                      f"signature def of {self.name} version {self.version}")
        if signature == SIGNATURE:
            return self
        with self._views_lock:
            if signature not in self._views:
                function = _through_bytes(self.keepalive.signatures[signature])
                self._views[signature] = LoadedVersion(
                    self.name, self.version, self.path, self.signature_defs, function,
                    self.keepalive, signature, base=self)
            return self._views[signature]

    def predict(self, images: np.ndarray, deadline: float | None = None,
                alive: Callable[[], bool] | None = None,
                chunk_pixels: int = 4 * 2**20) -> np.ndarray:
        """Probabilities of a checked batch, run in sub-batches of about chunk_pixels pixels.

        Between sub-batches the deadline and the client are checked, so a batch whose caller
        gave up stops early (one model call itself cannot be interrupted). Each image is
        independent in the U-Net (inference-mode batch norm), so splitting changes nothing.
        """
        import tensorflow as tf

        images = check_image(images)
        step = max(1, chunk_pixels // (images.shape[1] * images.shape[2]))
        outputs = []
        for start in range(0, len(images), step):
            check_alive(deadline, alive)
            batch = tf.constant(images[start:start + step])
            try:
                outputs.append(self.function(**{INPUT_NAME: batch})[OUTPUT_NAME].numpy())
            except tf.errors.OpError as error:  # TF Serving passes the run status through,
                # e.g. INVALID_ARGUMENT for a side the U-Net cannot halve evenly
                raise ServingRequestError(f"{type(error).__name__}: {error.message.strip()}",
                                          status_code_name(error)) from error
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def request_images(self, request) -> np.ndarray:
        """The checked images of a PredictRequest (the gRPC and warm-up path) for the
        request's signature; serving(signature) runs them."""
        signature = request.model_spec.signature_name or SIGNATURE
        self.serving(signature)  # the signature exists
        names, expected = sorted(request.inputs), sorted(CONTRACTS[signature]["inputs"])
        if names != expected:
            raise ServingRequestError(f"request inputs are {names}; {signature} takes exactly "
                                      f"{expected}")
        if signature == BYTES_SIGNATURE:
            raw, *sizes = (request.inputs[name] for name in BYTES_INPUTS)
            for name, size in zip(BYTES_INPUTS[1:], sizes, strict=True):
                if size.dtype != DT_INT32 or len(size.tensor_shape.dim) != 1:
                    raise ServingRequestError(
                        f"input {name!r} must be DT_INT32 of shape [N], got "
                        f"{DataType.Name(size.dtype)} {[d.size for d in size.tensor_shape.dim]}")
            return bytes_images(strings_from_tensor_proto(raw, BYTES_INPUTS[0]),
                                *(from_tensor_proto(size, name)
                                  for name, size in zip(BYTES_INPUTS[1:], sizes, strict=True)))
        return check_image(from_tensor_proto(request.inputs[INPUT_NAME]))


def load_version(name: str, path: Path, require_warmup: bool = False) -> LoadedVersion:
    """Load, check and warm up one version directory. Warm-up failures fail the load."""
    import tensorflow as tf

    signature_defs = read_signature_defs(path)
    check_signature(path, signature_defs)
    loaded = tf.saved_model.load(str(path))
    version = LoadedVersion(name, int(path.name) if path.name.isdigit() else 0, path,
                            signature_defs, loaded.signatures[SIGNATURE], loaded)
    requests = read_warmup_requests(path)
    if require_warmup and not requests:
        raise ModelFormatError(f"{path}: no warm-up requests in assets.extra/")
    for request in requests:
        images = version.request_images(request)
        output = version.serving(request.model_spec.signature_name).predict(images)
        if output.shape != (*images.shape[:3], 1):
            raise ModelFormatError(f"{path}: warm-up output shape {list(output.shape)} does not "
                                   f"match its input {list(images.shape)}")
    return version


def status_code_name(error: Exception) -> str:
    """The status code name TF Serving would report for a failed load or model run."""
    import grpc
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    if isinstance(error, tf.errors.OpError):  # e.g. NOT_FOUND for missing variables
        return {code.value[0]: code.name for code in grpc.StatusCode}.get(error.error_code,
                                                                           "UNKNOWN")
    if isinstance(error, ServingRequestError):
        return error.code
    if isinstance(error, FileNotFoundError):  # no saved_model.pb (yet)
        return "NOT_FOUND"
    if isinstance(error, DecodeError):  # truncated or corrupt saved_model.pb
        return "DATA_LOSS"
    if isinstance(error, ValueError):  # ModelFormatError: signature or warm-up contract
        return "INVALID_ARGUMENT"
    return "INTERNAL"


