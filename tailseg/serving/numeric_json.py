"""Fast decoding of JSON bodies that hold one rectangular array of numbers.

A 448 x 448 chip is ~600 000 JSON numbers. Decoding them into Python floats and nested lists
and then into NumPy costs more than the model run, so a body of the plain form
`{"inputs": [[...]]}` (or "instances", "outputs", "predictions") is decoded without Python
objects: byte-level checks prove the array is strict JSON and rectangular, and pandas' C parser
(correctly rounded, like orjson and Python's float()) reads all numbers at once.

The fast path never decides an error. Anything it cannot prove equal to the general path
(whitespace inside a number, strings, objects, null, NaN, empty lists, ragged nesting, leading
zeros, "-0", integers of 16 or more digits, values that overflow) returns None, and the caller
decodes the body with orjson, which gives TF Serving's errors. So results are bit-identical to
orjson -> float64 -> float32, and the fast path is never laxer than strict JSON.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np

MAX_RANK = 8
_BODY = re.compile(rb'\A[ \t\n\r]*\{[ \t\n\r]*"(?P<key>[a-z_]+)"[ \t\n\r]*:[ \t\n\r]*\[')
_TAIL = re.compile(rb'\][ \t\n\r]*\}[ \t\n\r]*\Z')
_WHITESPACE = b" \t\n\r"
_NUMBER_CHARS = b"0123456789-+.eE"

# One bit per character class; a class's "forbidden" byte holds the classes that may not follow it.
_OPEN, _CLOSE, _COMMA, _DIGIT, _MINUS, _PLUS, _POINT, _EXP = (1 << bit for bit in range(8))
_FOLLOWERS = {_OPEN: _OPEN | _DIGIT | _MINUS, _CLOSE: _CLOSE | _COMMA,
              _COMMA: _OPEN | _DIGIT | _MINUS, _DIGIT: _DIGIT | _POINT | _EXP | _CLOSE | _COMMA,
              _MINUS: _DIGIT, _PLUS: _DIGIT, _POINT: _DIGIT, _EXP: _DIGIT | _MINUS | _PLUS}
_CLASS_OF = {ord("["): _OPEN, ord("]"): _CLOSE, ord(","): _COMMA, ord("-"): _MINUS,
             ord("+"): _PLUS, ord("."): _POINT, ord("e"): _EXP, ord("E"): _EXP,
             **{ord(digit): _DIGIT for digit in "0123456789"}}
# Characters outside the classes (whitespace included) map to 0 and are caught by a zero test.
_CLASS_TABLE = bytes(_CLASS_OF.get(code, 0) for code in range(256))
_FORBIDDEN_TABLE = bytes(0xFF ^ _FOLLOWERS[_CLASS_OF[code]] if code in _CLASS_OF else 0
                         for code in range(256))
_ZERO_TABLE = bytes.maketrans(b"123456789[", b"111111111,")
_COMMA_TO_NEWLINE = bytes.maketrans(b",", b"\n")
_DIGITS_TO_ONE = bytes.maketrans(b"0123456789[].eE+", b"1111111111,,xxxx")
_LONG_INTEGER = re.compile(rb",1{16,},")


def fast_json_enabled() -> bool:
    """False when TAILSEG_FAST_JSON=0: the benchmark's "before" (read at each call)."""
    return os.environ.get("TAILSEG_FAST_JSON", "1") != "0"


def preload_parser() -> None:
    """Import the number parser now (a server calls it at start, not on its first request)."""
    import pandas  # noqa: F401


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
    compact = _without_whitespace(text)
    if compact is None or not _strict_json_numbers(compact):
        return None
    shape = _rectangular_shape(compact.translate(None, _NUMBER_CHARS))
    if shape is None:
        return None
    values = _parse_numbers(compact)
    if values is None or values.size != int(np.prod(shape)) or not np.isfinite(values).all():
        return None  # overflow to inf: the general path decides
    if np.abs(values).max() >= 1e15 and _LONG_INTEGER.search(compact.translate(_DIGITS_TO_ONE,
                                                                               b"-")):
        return None  # an integer of 16+ digits may round differently as int64 -> float32
    if np.signbit(values[values == 0]).any() and (b"-0," in compact or b"-0]" in compact):
        return None  # orjson reads "-0" as the integer 0, which becomes +0.0, not -0.0
    return values.reshape(shape)


def _without_whitespace(text: bytes) -> bytes | None:
    """The text without whitespace, or None if whitespace separates two number characters."""
    if not any(space in text for space in _WHITESPACE):
        return text
    kind = np.frombuffer(text.translate(bytes.maketrans(
        _WHITESPACE + _NUMBER_CHARS, b"\1" * 4 + b"\2" * len(_NUMBER_CHARS))), np.uint8)
    kept = np.flatnonzero(kind != 1)
    gaps = np.flatnonzero(np.diff(kept) > 1)
    if ((kind[kept[gaps]] == 2) & (kind[kept[gaps + 1]] == 2)).any():
        return None
    return text.translate(None, _WHITESPACE)


def _strict_json_numbers(compact: bytes) -> bool:
    """Only brackets, commas and JSON numbers, each in a place strict JSON allows."""
    if len(compact) < 3 or compact[0] != ord("[") or compact[-1] != ord("]"):
        return False
    classes = np.frombuffer(compact.translate(_CLASS_TABLE), np.uint8)
    if not classes.all():
        return False  # whitespace inside a token, letters, quotes, braces, ...
    forbidden = np.frombuffer(compact.translate(_FORBIDDEN_TABLE), np.uint8)
    if (forbidden[:-1] & classes[1:]).any():
        return False  # "[]", "[,", ",,", "1[", "]1", "+1", ".5", "5.", "1e", "--1", "1-2", ...
    # "01" and "-00" are not JSON. With "-" deleted and "[" read as ",", a leading zero is
    # a "0" after a "," and before a digit (exponents such as "1e-05" keep their "e" before).
    marks = np.frombuffer(compact.translate(_ZERO_TABLE, b"-"), np.uint8)
    return not ((marks[:-2] == ord(",")) & (marks[1:-1] == ord("0"))
                & ((marks[2:] | 1) == ord("1"))).any()


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


def _parse_numbers(compact: bytes) -> np.ndarray | None:
    """All numbers, in order, correctly rounded to float64 (pandas' default C parser)."""
    import pandas as pd

    lines = compact.translate(_COMMA_TO_NEWLINE, b"[]")
    try:
        frame = pd.read_csv(io.BytesIO(lines), header=None, dtype=np.float64, engine="c",
                            na_filter=False, skip_blank_lines=False)
    except ValueError:  # a token such as "1.2.3" or "1e5e3" that is not a number
        return None
    return frame.to_numpy().ravel() if frame.shape[1] == 1 else None
