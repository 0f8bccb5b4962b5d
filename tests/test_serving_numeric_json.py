"""The fast REST JSON path (tailseg/serving/numeric_json.py) against the general orjson path.

The fast path must give bit-identical float32 values wherever it answers, and must answer None
for everything strict JSON or TF Serving refuses, so errors stay the general path's."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from tailseg.errors import ServingRequestError
from tailseg.serving.numeric_json import decode_numeric_array, decode_numeric_body
from tailseg.serving.protocol import parse_predict_body, parse_predict_response_body


def outcome(parse, body: bytes, monkeypatch, fast: bool):
    """("ok", dtype, shape, bits, extras) or ("error", message) of one parse."""
    monkeypatch.setenv("TAILSEG_FAST_JSON", "1" if fast else "0")
    try:
        result = parse(body)
    except ServingRequestError as error:
        return "error", str(error)
    finally:
        monkeypatch.delenv("TAILSEG_FAST_JSON")
    array, extras = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    return "ok", array.dtype, array.shape, array.tobytes(), extras


def random_chips(seed: int) -> list[np.ndarray]:
    """float32 [N, H, W, 3] arrays with negatives, exponents from 1e-30 to 1e30, -0.0, integers
    and subnormals."""
    rng = np.random.default_rng(seed)
    scaled = rng.standard_normal((2, 5, 7, 3)) * 10.0 ** rng.integers(-30, 31, (2, 5, 7, 3))
    special = np.array([-0.0, 0.0, 1.0, -7.0, 3e38, -1e-45, 1e-40, 0.1, 16777217.0, 0.3],
                       dtype=np.float32)
    reflectance = rng.uniform(-0.02, 0.6, (1, 16, 16, 3)).astype(np.float32)
    return [scaled.astype(np.float32), np.resize(special, (1, 2, 5, 3)), reflectance,
            rng.integers(-10_000, 10_000, (1, 3, 4, 3)).astype(np.float32)]


def bodies(array: np.ndarray, key: str) -> list[bytes]:
    """The array as orjson writes it (float32 shortest form), as json.dumps writes it (float64
    repr, spaces after commas), indented, and with 17-digit float64 values."""
    wide = array.astype(np.float64) * (1 + 1e-9)
    return [orjson.dumps({key: array}, option=orjson.OPT_SERIALIZE_NUMPY),
            json.dumps({key: array.tolist()}).encode(),
            json.dumps({key: array.tolist()}, indent=2).encode(),
            orjson.dumps({key: wide}, option=orjson.OPT_SERIALIZE_NUMPY)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("key", ["inputs", "instances"])
def test_fast_path_equals_general_path_on_random_float32(seed, key, monkeypatch):
    for array in random_chips(seed):
        for body in bodies(array, key):
            assert decode_numeric_body(body, (key,)) is not None, body[:80]  # fast path taken
            fast = outcome(parse_predict_body, body, monkeypatch, fast=True)
            assert fast == outcome(parse_predict_body, body, monkeypatch, fast=False)
            assert fast[0] == "ok" and fast[4] == (key == "instances", None)


def test_integer_tokens_round_as_the_general_path_does(monkeypatch):
    # "-0" is the integer 0 (+0.0) for orjson, "-0.0" is -0.0; all-integer arrays go int64 ->
    # float32; integers beyond 2**53 round differently as int64 and as float64.
    for text in ["[[[[-0, -0.0, 0]]]]", "[[[[1, 2, 3]]]]", "[[[[-0, 1, 2]]]]",
                 "[[[[9007199254740993, 1, 2]]]]", "[[[[9007199254740993, 1.5, 2]]]]",
                 "[[[[123456789012345678901234567890, 1, 2]]]]", "[[[[1e-400, 1E+2, 5e-1]]]]",
                 "[[[[18446744073709551615, 1, 2]]]]", "[[[[-9223372036854775809, 1, 2]]]]",
                 "[[[[9223372036854775807, 1.5, 2]]]]",
                 "[[[[-1e-400, 0, 2.2250738585072011e-308]]]]"]:
        body = f'{{"inputs": {text}}}'.encode()
        fast = outcome(parse_predict_body, body, monkeypatch, fast=True)
        assert fast == outcome(parse_predict_body, body, monkeypatch, fast=False), text
    assert np.signbit(decode_numeric_array(b"[-0.0,0]")).tolist() == [True, False]
    assert np.signbit(decode_numeric_array(b"[-0,0]")).tolist() == [False, False]  # as orjson


MALFORMED = [
    # Not strict JSON numbers: TF Serving's parser (RapidJSON) refuses each.
    "[[[[01, 0.1, 0.2]]]]", "[[[[-01, 0.1, 0.2]]]]", "[[[[00, 0.1, 0.2]]]]",
    "[[[[+1, 0.1, 0.2]]]]", "[[[[.5, 0.1, 0.2]]]]", "[[[[5., 0.1, 0.2]]]]",
    "[[[[-.5, 0.1, 0.2]]]]", "[[[[1e, 0.1, 0.2]]]]", "[[[[1e+, 0.1, 0.2]]]]",
    "[[[[1.e5, 0.1, 0.2]]]]", "[[[[--1, 0.1, 0.2]]]]", "[[[[1-2, 0.1, 0.2]]]]",
    "[[[[1.2.3, 0.1, 0.2]]]]", "[[[[1e5e3, 0.1, 0.2]]]]", "[[[[1e5.3, 0.1, 0.2]]]]",
    "[[[[-, 0.1, 0.2]]]]", "[[[[e5, 0.1, 0.2]]]]", "[[[[1 2, 0.1, 0.2]]]]",
    "[[[[0.1, 0.2, 0.3,]]]]", "[[[[,0.1, 0.2, 0.3]]]]", "[[[[0.1,, 0.2, 0.3]]]]",
    "[[[[0.1 0.2 0.3]]]]", "[[[[0.1, 0.2, 0.3]]]", "[[[[0.1, 0.2, 0.3]]]]]",
    "[[[[0.1, 0.2, 0.3]]][[[0.1, 0.2, 0.3]]]]", "[[[[0.1, 0.2, 0.3]]]]1",
    "[[[[NaN, 0.1, 0.2]]]]", "[[[[Infinity, 0.1, 0.2]]]]", "[[[[-Infinity, 0.1, 0.2]]]]",
    "[[[[1e400, 0.1, 0.2]]]]", "[[[[1e39, 0.1, 0.2]]]]", "[[[[null, 0.1, 0.2]]]]",
    '[[[["0.1", 0.1, 0.2]]]]', "[[[[0x1, 0.1, 0.2]]]]",
    "[[[[1\u00a0, 0.1, 0.2]]]]", "[[[[1_0, 0.1, 0.2]]]]",
    # Ragged, empty or mixed nesting: TF Serving's 400.
    "[[[[0.1, 0.2, 0.3]]], [[0.1]]]", "[[[[0.1, 0.2, 0.3], [0.1, 0.2]]]]",
    "[[[[0.1, 0.2, 0.3]], [[0.1, 0.2, 0.3]], [0.1, 0.2, 0.3]]]", "[[[0.1, [0.2], 0.3]]]",
    "[[[[0.1, 0.2, 0.3]], 0.4]]", "[]", "[[]]", "[[[[]]]]", "[[[[0.1, 0.2, 0.3]], []]]",
    "[[[[[[[[[[0.1]]]]]]]]]]", "0.1", "[[[[0.1, 0.2, 0.3]]]] ]",
    # The skeleton of a valid array with numbers outside their slots: each must stay an error.
    "[[[[0.1, 0.2, 0.3]]]]1", "[[[[0.1, 0.2,]0.3]]]", "[[[[0.1, 0.2, 0.3]]], [[[0.1,]0.2, 0.3]]]]",
    "[[[[0.1, 0.2, 0.3]] 4]]", "[[[1[0.1, 0.2, 0.3]]]]", "[[[[0.1, 0.2, 0.3]]]-1]",
    "[[[[0.1, 0.2, 0.3]]],\n 2[[[0.1, 0.2, 0.3]]]]", "[[[[0.1, 0.2, 0.3] ]0]]",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_bodies_get_the_general_paths_answer(text, monkeypatch):
    for body in (f'{{"inputs": {text}}}'.encode(), f'{{"instances":{text}}}'.encode()):
        fast = outcome(parse_predict_body, body, monkeypatch, fast=True)
        assert fast == outcome(parse_predict_body, body, monkeypatch, fast=False)
        assert fast[0] == "error", body  # none of these is a valid [N, H, W, 3] chip
    assert decode_numeric_array(text.encode()) is None or "1e39" in text


@pytest.mark.parametrize("body", [
    b'{"inputs": [[[[0.1, 0.2, 0.3]]]], "signature_name": "serving_default"}',
    b'{"signature_name": "serving_default", "inputs": [[[[0.1, 0.2, 0.3]]]]}',
    b'{"signature_name": "nope", "instances": [[[[0.1, 0.2, 0.3]]]]}',
    b'{"inputs": {"image": [[[[0.1, 0.2, 0.3]]]]}}',
    b'{"instances": [{"image": [[[0.1, 0.2, 0.3]]]}]}',
    b'{"inputs": [[[[0.1, 0.2, 0.3]]]], "inputs": [[[[0.4, 0.5, 0.6]]]]}',
    b'{"inputs": [[[[0.1, 0.2, 0.3]]]], "image": [[[[0.1, 0.2, 0.3]]]]}',
    b'{"instances": [[[[0.1, 0.2, 0.3]]]], "inputs": [[[[0.1, 0.2, 0.3]]]]}',
    b'{"outputs": [[[[0.1, 0.2, 0.3]]]]}', b'{"inputs": [[[[0.1, 0.2, 0.3]]]]',
    b'\xef\xbb\xbf{"inputs": [[[[0.1, 0.2, 0.3]]]]}', b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}}',
    b' \n{ "inputs" :\t[[[[0.1, 0.2, 0.3]]]] }\n', b'{"inputs": [[[[true, 0.1, 0.2]]]]}',
b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}x',
])
def test_other_body_forms_answer_as_before(body, monkeypatch):
    fast = outcome(parse_predict_body, body, monkeypatch, fast=True)
    assert fast == outcome(parse_predict_body, body, monkeypatch, fast=False)


def test_client_decodes_responses_like_the_general_path(monkeypatch):
    rng = np.random.default_rng(3)
    probability = rng.uniform(0, 1, (2, 9, 11, 1)).astype(np.float32)
    probability[0, 0, 0, 0], probability[0, 0, 1, 0] = 0.0, 1.0
    for key in ("outputs", "predictions"):
        body = orjson.dumps({key: probability}, option=orjson.OPT_SERIALIZE_NUMPY)
        assert decode_numeric_body(body, (key,)) is not None
        fast = outcome(parse_predict_response_body, body, monkeypatch, fast=True)
        assert fast == outcome(parse_predict_response_body, body, monkeypatch, fast=False)
        assert fast[3] == probability.tobytes()
    named = json.dumps({"outputs": {"probability": probability.tolist()}}).encode()
    assert outcome(parse_predict_response_body, named, monkeypatch, fast=True)[3] == \
        probability.tobytes()
