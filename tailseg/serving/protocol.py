"""Codecs shared by the server and the clients: numpy <-> TensorProto, REST JSON bodies.

Follows TF Serving's REST API (api_rest.md): a predict body holds either "instances" (row
format, answered with "predictions") or "inputs" (columnar format, answered with "outputs").
With a single input the values may be given bare or under the input's name.
"""

from __future__ import annotations

import base64
import binascii
import json
import math

import numpy as np
import orjson
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from tailseg.errors import ServingRequestError
from tailseg.export import BYTES_INPUTS, BYTES_SIGNATURE, INPUT_NAME, OUTPUT_NAME, SIGNATURE
from tailseg.serving.limits import gc_paused
from tailseg.serving.numeric_json import decode_numeric_body

# gRPC status name -> HTTP status, as TF Serving's http_server.cc maps them.
HTTP_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503,
    "INTERNAL": 500, "DEADLINE_EXCEEDED": 504, "CANCELLED": 499, "UNKNOWN": 500,
}
_NUMPY_TO_DTYPE = {np.dtype(np.float32): types_pb2.DT_FLOAT,
                   np.dtype(np.float64): types_pb2.DT_DOUBLE,
                   np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64,
                   np.dtype(np.uint8): types_pb2.DT_UINT8}
_DTYPE_TO_NUMPY = {value: key for key, value in _NUMPY_TO_DTYPE.items()}
_VAL_FIELD = {np.float32: "float_val", np.float64: "double_val", np.int64: "int64_val"}


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with the raw bytes in tensor_content (what tf.make_tensor_proto writes)."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _NUMPY_TO_DTYPE:
        raise ServingRequestError(f"unsupported dtype {array.dtype}")
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape])
    return tensor_pb2.TensorProto(dtype=_NUMPY_TO_DTYPE[array.dtype], tensor_shape=shape,
                                  tensor_content=array.tobytes())


def from_tensor_proto(proto: tensor_pb2.TensorProto, name: str = INPUT_NAME) -> np.ndarray:
    """The numpy array of a TensorProto (tensor_content or the typed *_val fields).

    Raises:
        ServingRequestError: INVALID_ARGUMENT for an unsupported dtype, an unknown rank, a
            negative dimension, or a value count (or tensor_content length) that does not
            match the shape, as TF Serving's "tensor parsing error".
    """
    if proto.dtype not in _DTYPE_TO_NUMPY:
        raise ServingRequestError(
            f"input {name!r} has dtype {types_pb2.DataType.Name(proto.dtype)}; expected DT_FLOAT")
    dtype = _DTYPE_TO_NUMPY[proto.dtype]
    shape = [dim.size for dim in proto.tensor_shape.dim]
    problem = "unknown rank" if proto.tensor_shape.unknown_rank else \
        f"negative dimension in shape {shape}" if any(size < 0 for size in shape) else None
    if problem:
        raise ServingRequestError(f"tensor parsing error: {name}: {problem}")
    expected = math.prod(shape)  # Python integers: dimensions that overflow int64 are caught below
    if proto.tensor_content:
        if len(proto.tensor_content) % dtype.itemsize:
            raise ServingRequestError(
                f"tensor parsing error: {name}: tensor_content holds {len(proto.tensor_content)} "
                f"bytes, not a multiple of {dtype.itemsize} ({dtype.name})")
        held = len(proto.tensor_content) // dtype.itemsize
    else:
        held = len(getattr(proto, _VAL_FIELD.get(dtype.type, "int_val")))
    if held != expected:
        raise ServingRequestError(f"tensor parsing error: {name}: shape {shape} needs {expected} "
                                  f"values but the tensor holds {held}")
    if proto.tensor_content:
        values = np.frombuffer(proto.tensor_content, dtype=dtype)
    else:
        values = np.asarray(getattr(proto, _VAL_FIELD.get(dtype.type, "int_val")), dtype=dtype)
    return values.reshape(shape)


def strings_from_tensor_proto(proto: tensor_pb2.TensorProto, name: str) -> list[bytes]:
    """The values of a DT_STRING TensorProto of rank 1."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.dtype != types_pb2.DT_STRING:
        raise ServingRequestError(f"input {name!r} has dtype "
                                  f"{types_pb2.DataType.Name(proto.dtype)}; expected DT_STRING")
    if len(shape) != 1 or shape[0] != len(proto.string_val):
        raise ServingRequestError(f"tensor parsing error: {name}: shape {shape} with "
                                  f"{len(proto.string_val)} strings; expected [N] with N strings")
    return list(proto.string_val)


def bytes_images(raw: list[bytes], height, width) -> np.ndarray:
    """The checked float32 images [N, H, W, 3] of a serving_bytes request.

    Refuses (INVALID_ARGUMENT) what the signature's graph refuses: counts that differ, sizes
    that differ within the request, and byte lengths other than H x W x 3 x 4.
    """
    height, width = (np.asarray(value).reshape(-1) for value in (height, width))
    raw_name, height_name, width_name = BYTES_INPUTS
    if not len(raw) or len(height) != len(raw) or len(width) != len(raw):
        raise ServingRequestError(
            f"{raw_name}, {height_name} and {width_name} need one value per image "
            f"(got {len(raw)}, {len(height)} and {len(width)})")
    for name, values in ((height_name, height), (width_name, width)):
        if values.dtype.kind not in "iu" or (values != values[0]).any() or values[0] < 1:
            raise ServingRequestError(f"{name} must be one positive integer for all images of a "
                                      f"request, got {values.tolist()}")
    size = int(height[0]) * int(width[0]) * 3
    for index, value in enumerate(raw):
        if len(value) != 4 * size:
            raise ServingRequestError(
                f"{raw_name}[{index}] holds {len(value)} bytes; {height_name} "
                f"{height[0]} x {width_name} {width[0]} x 3 bands of float32 need {4 * size}")
    images = np.frombuffer(b"".join(raw), "<f4").astype(np.float32)
    return check_image(images.reshape(len(raw), int(height[0]), int(width[0]), 3), raw_name)


def raw_images(images: np.ndarray) -> list[bytes]:
    """The image_bytes values of a serving_bytes request: each image's float32 values,
    little-endian, row-major (the inverse of bytes_images)."""
    return [image.astype("<f4").tobytes() for image in images]


def check_image(array: np.ndarray, name: str = INPUT_NAME) -> np.ndarray:
    """Enforce the serving contract: float32 [N, H, W, 3] with N, H, W >= 1."""
    if array.dtype != np.float32:
        raise ServingRequestError(f"input {name!r} has dtype {array.dtype}; expected float32 "
                                  "(DT_FLOAT) reflectance")
    if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape) < 1:
        raise ServingRequestError(f"input {name!r} has shape {list(array.shape)}; expected "
                                  "[N, H, W, 3] (batch, height, width, bands B2 B3 B4)")
    finite = np.isfinite(array)
    if not finite.all():
        # TF Serving would run the model and answer NaN probabilities; a deliberate difference.
        bad = int(finite.size - np.count_nonzero(finite))
        first = [int(i) for i in np.argwhere(~finite)[0]]
        raise ServingRequestError(f"input {name!r} has {bad} non-finite values (NaN or Inf), the "
                                  f"first at [n, y, x, band] = {first}; send finite reflectance "
                                  "(mask nodata pixels before the request)")
    return array


def _unwrap(value, what: str):
    """Accept a bare value or a {"image": value} object for the single input."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {INPUT_NAME})
        if unknown or INPUT_NAME not in value:
            raise ServingRequestError(f"{what}: expected the single input {INPUT_NAME!r}, got "
                                      f"keys {sorted(value)}")
        return value[INPUT_NAME]
    return value


def _numeric_array(values, what: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except ValueError as error:  # ragged nested lists
        raise ServingRequestError(f"{what}: ragged or malformed array ({error})") from error
    if array.dtype.kind not in "iuf" or array.dtype == np.bool_:
        kind = {"U": "text", "S": "bytes", "O": "null or mixed", "b": "boolean"}
        raise ServingRequestError(f"{what}: values must be numbers (float32 reflectance), got "
                                  f"{kind.get(array.dtype.kind, array.dtype.name)} values")
    return array.astype(np.float32)


def parse_predict_body(body: bytes, signatures=None) -> tuple[np.ndarray, bool, str | None]:
    """Parse a REST :predict body -> (images, row_format, signature_name).

    Args:
        signatures: the served version's signature names; as TF Serving's REST handler, an
            unknown signature_name is refused before the inputs are read (None: not checked).
    """
    with gc_paused():
        return _parse_predict_body(body, signatures)


def _parse_predict_body(body: bytes, signatures=None) -> tuple[np.ndarray, bool, str | None]:
    # A plain {"inputs" | "instances": [numbers]} body skips Python objects; anything else,
    # errors included, takes the general path below.
    if (fast := decode_numeric_body(body, ("instances", "inputs"))) is not None:
        key, values = fast
        return check_image(values.astype(np.float32)), key == "instances", None
    try:
        payload = orjson.loads(body)
    except json.JSONDecodeError as error:  # orjson's error subclasses it
        raise ServingRequestError(f"JSON Parse error: {error}") from error
    if not isinstance(payload, dict):
        raise ServingRequestError("request body must be a JSON object")
    unknown = sorted(set(payload) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise ServingRequestError(f"unknown request keys {unknown}; use 'instances' or 'inputs'")
    if ("instances" in payload) == ("inputs" in payload):
        raise ServingRequestError("request must have exactly one of 'instances' or 'inputs'")
    signature = payload.get("signature_name")
    if signature is not None and not isinstance(signature, str):
        raise ServingRequestError("'signature_name' key must be a string value.")
    if signatures is not None and (signature or SIGNATURE) not in signatures:
        raise ServingRequestError(f"Serving signature name: {signature!r} not found in "
                                  "signature def")
    if signature == BYTES_SIGNATURE:
        return _bytes_body(payload), "instances" in payload, signature
    if "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingRequestError("'instances' must be a non-empty list")
        rows = [_unwrap(instance, "instances") for instance in instances]
        return check_image(_numeric_array(rows, "instances")), True, signature
    value = _unwrap(payload["inputs"], "inputs")
    return check_image(_numeric_array(value, "inputs")), False, signature


def _bytes_body(payload: dict) -> np.ndarray:
    """The images of a serving_bytes body: columnar {"inputs": {"image_bytes": [{"b64": ...}],
    "height": [H], "width": [W]}} or rows {"instances": [{"image_bytes": {"b64": ...},
    "height": H, "width": W}]}."""
    expected = sorted(BYTES_INPUTS)
    if "inputs" in payload:
        columns = payload["inputs"]
        if not isinstance(columns, dict) or sorted(columns) != expected:
            raise ServingRequestError(f"'inputs' of {BYTES_SIGNATURE} must name exactly "
                                      f"{expected}")
    else:
        rows = payload["instances"]
        if not isinstance(rows, list) or not rows or not all(
                isinstance(row, dict) and sorted(row) == expected for row in rows):
            raise ServingRequestError(f"'instances' of {BYTES_SIGNATURE} must be objects naming "
                                      f"exactly {expected}")
        columns = {name: [row[name] for row in rows] for name in BYTES_INPUTS}
    raw_name, height_name, width_name = BYTES_INPUTS
    for name in BYTES_INPUTS:  # each input is a tensor of shape [N]: a list, even for one image
        if not isinstance(columns[name], list):
            raise ServingRequestError(f"{name} must be a list (shape [N]), got "
                                      f"{type(columns[name]).__name__}")
    raw = [_binary(value, f"{raw_name}[{index}]")
           for index, value in enumerate(columns[raw_name])]
    sizes = []
    for name in (height_name, width_name):
        column = columns[name]
        if not all(type(value) is int and -2**31 <= value < 2**31 for value in column):
            raise ServingRequestError(f"{name} must hold int32 integers, got {column[:4]}")
        sizes.append(np.asarray(column, np.int64))
    return bytes_images(raw, *sizes)


def _binary(value, what: str) -> bytes:
    """A DT_STRING value: {"b64": "..."} (standard base64) or a plain string (its UTF-8)."""
    if isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as error:
            raise ServingRequestError(f"{what}: invalid base64 ({error})") from error
    if isinstance(value, str):
        return value.encode()
    raise ServingRequestError(f'{what}: expected {{"b64": "<base64>"}}, got '
                              f"{type(value).__name__}")


def predict_response_json(probability: np.ndarray, row_format: bool) -> bytes:
    """Row format -> {"predictions": [...]} per instance; columnar -> {"outputs": [...]}."""
    key = "predictions" if row_format else "outputs"
    # orjson writes float32 arrays directly, in their shortest exact form: ~10x faster than
    # json.dumps(array.tolist()) on a 448 x 448 chip.
    return orjson.dumps({key: np.ascontiguousarray(probability)},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def parse_predict_response_body(body: bytes) -> np.ndarray:
    """parse_predict_response of the raw response body, without Python floats when it is plain.

    Raises:
        ServingRequestError: the body is not JSON.
    """
    with gc_paused():
        if (fast := decode_numeric_body(body, ("outputs", "predictions"))) is not None:
            return fast[1].astype(np.float32)
        try:
            payload = orjson.loads(body)
        except json.JSONDecodeError as error:
            raise ServingRequestError(f"JSON Parse error: {error}") from error
        return _parse_predict_response(payload)


def parse_predict_response(payload: dict) -> np.ndarray:
    """Inverse of predict_response_json for clients; accepts named outputs too."""
    with gc_paused():
        return _parse_predict_response(payload)


def _parse_predict_response(payload: dict) -> np.ndarray:
    value = payload.get("outputs", payload.get("predictions"))
    if isinstance(value, dict):
        value = value[OUTPUT_NAME]
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        value = [row[OUTPUT_NAME] for row in value]
    return np.asarray(value, dtype=np.float32)
