"""Fast decoding of JSON bodies that hold one rectangular array of numbers.

A 448 x 448 chip is ~600 000 JSON numbers. Decoding them into Python floats and nested lists
and then into NumPy costs more than the model run, so a body of the plain form
`{"inputs": [[...]]}` (or "instances", "outputs", "predictions") is decoded without Python
objects: simdjson (https://simdjson.org, through pysimdjson) validates the whole array as strict
JSON and reads all numbers, correctly rounded like orjson and Python's float(), into one float64
buffer; a byte-level check of the brackets and commas proves the array rectangular.

The fast path never decides an error. Anything it cannot prove equal to the general path
(invalid JSON, strings, objects, null, NaN, empty lists, ragged or mixed nesting, integers of 16
or more digits or beyond 64 bits, values that overflow) returns None, and the caller decodes the
body with orjson, which gives TF Serving's errors. So results are bit-identical to
orjson -> float64 -> float32, and the fast path is never laxer than strict JSON.
"""

from __future__ import annotations

import os
import re

import numpy as np

MAX_RANK = 8
_BODY = re.compile(rb'\A[ \t\n\r]*\{[ \t\n\r]*"(?P<key>[a-z_]+)"[ \t\n\r]*:[ \t\n\r]*\[')
_TAIL = re.compile(rb'\][ \t\n\r]*\}[ \t\n\r]*\Z')
_WHITESPACE = b" \t\n\r"
_NUMBER_CHARS = b"0123456789-+.eE"
_DIGITS_TO_ONE = bytes.maketrans(b"0123456789[].eE+", b"1111111111,,xxxx")
_LONG_INTEGER = re.compile(rb",1{16,},")


def fast_json_enabled() -> bool:
    """False when TAILSEG_FAST_JSON=0: the benchmark's "before" (read at each call)."""
    return os.environ.get("TAILSEG_FAST_JSON", "1") != "0"


def preload_parser() -> None:
    """Import the number parser now (a server calls it at start, not on its first request)."""
    import simdjson  # noqa: F401


def decode_numeric_body(body: bytes, keys: tuple[str, ...]) -> tuple[str, np.ndarray] | None:
    """(key, float64 array) for a body `{"<key>": <numbers>}` with key in keys, else None."""
    if not fast_json_enabled():
        return None
    head = _BODY.match(body)
    if head is None or head["key"].decode() not in keys:
        return None
    # Only the last bytes: a regex search from the front would try each of ~7 MB of positions.
    tail = _TAIL.search(body, max(head.end() - 1, len(body) - 64))
    if tail is None:
        return None
    array = decode_numeric_array(body[head.end() - 1:tail.start() + 1])
    return None if array is None else (head["key"].decode(), array)


def decode_numeric_array(text: bytes) -> np.ndarray | None:
    """The float64 array of a JSON array of numbers, or None where the general path must decide.

    Args:
        text: the array's JSON text, from its "[" to its matching "]".
    """
    shape = _rectangular_shape(text.translate(None, _WHITESPACE + _NUMBER_CHARS))
    if shape is None:
        return None
    values = _parse_numbers(text)
    if values is None or values.size != int(np.prod(shape)) or not np.isfinite(values).all():
        return None  # overflow to inf: the general path decides
    if np.abs(values).max() >= 1e15 and _LONG_INTEGER.search(
            text.translate(_DIGITS_TO_ONE, _WHITESPACE + b"-")):
        return None  # an integer of 16+ digits may round differently as int64 -> float32
    return values.reshape(shape)


def _rectangular_shape(skeleton: bytes) -> tuple[int, ...] | None:
    """The shape whose nested lists print as this skeleton (numbers removed), or None if ragged.

    The first list at depth j (0-based) starts at byte j and ends where the first run of
    rank - j closing brackets ends; its length gives its element count, and the rectangular
    skeleton built from those counts must equal the skeleton byte for byte.
    """
    rank = len(skeleton) - len(skeleton.lstrip(b"["))
    if not 1 <= rank <= MAX_RANK:
        return None
    shape: list[int] = []
    element = 0  # skeleton length of one element at the current depth (a number: 0)
    for depth in reversed(range(rank)):
        closes = skeleton.find(b"]" * (rank - depth))
        length = closes + (rank - depth) - depth  # first list at this depth, brackets included
        count, rest = divmod(length - 1, element + 1)
        if closes < 0 or rest or count < 1:
            return None
        shape.insert(0, count)
        element = length
    expected = b""
    for count in reversed(shape):
        expected = b"[" + b",".join([expected] * count) + b"]"
    return tuple(shape) if expected == skeleton else None


def _parse_numbers(text: bytes) -> np.ndarray | None:
    """All numbers, in order, correctly rounded to float64, or None if the text is not strict
    JSON or holds anything but numbers and arrays (simdjson validates the whole document)."""
    import simdjson

    try:
        document = simdjson.Parser().parse(text)
    except (ValueError, RuntimeError):  # not JSON, a bad number, an integer beyond 64 bits
        return None
    try:
        return np.frombuffer(document.as_buffer(of_type="d"), np.float64).copy()
    except (TypeError, RuntimeError):  # null, true, a string, an object, a big integer
        return None
    finally:
        del document  # the parser may not be reused while its documents live
