"""The "serving_bytes" signature: raw float32 images as base64 (TF Serving's JSON form for
binary), on a real server over REST and gRPC, against "serving_default" and the graph itself.

The server decodes these requests in Python for its checks and then runs the signature's own
graph. Each bad request that the graph can express is checked twice: the server refuses it with
a clear 400, and the graph refuses it too, so real TF Serving would not run it either. The rest
are refused by TF Serving's JSON parsing (base64, int32, shapes) or, for non-finite values, by a
documented deliberate difference (see docs/serving.md)."""

from __future__ import annotations

import base64
import json

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tailseg.config import ModelConfig
from tailseg.errors import ModelFormatError
from tailseg.export import SIGNATURE, serving_function
from tailseg.model import build_unet
from tailseg.serving.client import RestClient
from tailseg.serving.process import launch_server
from tailseg.serving.protocol import to_tensor_proto
from tailseg.serving.version import check_signature, read_signature_defs
from tests import test_serving as base

# The module-scoped fixtures of test_serving: a tiny exported U-Net and a real server on it.
export, server, reference, images, http = (base.export, base.server, base.reference, base.images,
                                           base.http)


def raw(batch: np.ndarray) -> list[bytes]:
    return [image.astype("<f4").tobytes() for image in batch]


def columnar(batch: np.ndarray, **change) -> dict:
    count, height, width, _ = batch.shape
    inputs = {"image_bytes": [{"b64": base64.b64encode(b).decode()} for b in raw(batch)],
              "height": [height] * count, "width": [width] * count}
    return {"signature_name": "serving_bytes", "inputs": {**inputs, **change}}


def post(running, body: dict) -> tuple[int, dict]:
    return http("POST", f"{running.rest_url}/v1/models/tailseg:predict", json.dumps(body).encode())


def test_the_graph_equals_serving_default_bit_for_bit(export, images):
    loaded = tf.saved_model.load(export["saved_model"])
    default = loaded.signatures[SIGNATURE](image=tf.constant(images))["probability"].numpy()
    answer = loaded.signatures["serving_bytes"](
        image_bytes=tf.constant(raw(images)), height=tf.constant([30, 30]),
        width=tf.constant([45, 45]))["probability"].numpy()
    assert answer.shape == (2, 30, 45, 1) and np.array_equal(answer, default)


def test_rest_bytes_in_both_forms_equal_the_json_path(server, reference, images):
    status, columns = post(server, columnar(images))
    assert status == 200
    body = columnar(images)["inputs"]
    rows = [{name: body[name][index] for name in body} for index in range(len(images))]
    status, predictions = post(server, {"signature_name": "serving_bytes", "instances": rows})
    assert status == 200
    status, numbers = post(server, {"inputs": images.tolist()})
    assert status == 200
    assert np.array_equal(np.array(columns["outputs"]), np.array(numbers["outputs"]))
    assert np.array_equal(np.array(predictions["predictions"]), np.array(numbers["outputs"]))
    np.testing.assert_allclose(np.array(columns["outputs"]), reference(images), atol=1e-6)


def test_rest_client_sends_bytes_when_the_model_has_them(server, images):
    auto = RestClient(server.rest_url)
    answer = auto.predict(images)
    assert auto.binary is True  # asked the metadata once
    assert np.array_equal(answer, RestClient(server.rest_url, binary=False).predict(images))


def test_grpc_bytes_request_equals_the_float_request(server, reference, images):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "tailseg", "serving_bytes"
    strings = request.inputs["image_bytes"]
    strings.dtype = types_pb2.DT_STRING
    strings.tensor_shape.dim.add(size=2)
    strings.string_val.extend(raw(images))
    request.inputs["height"].CopyFrom(to_tensor_proto(np.array([30, 30], np.int32)))
    request.inputs["width"].CopyFrom(to_tensor_proto(np.array([45, 45], np.int32)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target))
    response = stub.Predict(request, timeout=30)
    assert response.model_spec.signature_name == "serving_bytes"
    output = response.outputs["probability"]
    values = np.frombuffer(output.tensor_content, np.float32).reshape(2, 30, 45, 1)
    np.testing.assert_allclose(values, reference(images), atol=1e-6)
    request.inputs["width"].CopyFrom(to_tensor_proto(np.array([44, 44], np.int32)))
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image_bytes[0] holds 16200 bytes" in error.value.details()


NAN = np.full((1, 30, 45, 3), 0.1, np.float32)
NAN[0, 3, 4, 1] = np.nan
# (change to the columnar body, words of the 400, graph inputs that must fail the same way)
BAD = [
    ({"image_bytes": [{"b64": "not base64!"}] * 2}, "invalid base64", None),
    ({"width": [44, 44]}, "image_bytes[0] holds 16200 bytes", ([30, 30], [44, 44])),
    ({"height": [30, 29]}, "height must be one positive integer", ([30, 29], [45, 45])),
    ({"height": [30]}, "need one value per image (got 2, 1 and 2)", ([30], [45, 45])),
    ({"height": [30.0, 30.0]}, "height must hold int32 integers", None),
    ({"height": [2**40, 2**40]}, "height must hold int32 integers", None),
    # A bare value is a rank-0 tensor in TF Serving's JSON, which the [N] signature refuses.
    ({"height": 30, "width": 45}, "height must be a list (shape [N])", None),
    ({"image_bytes": [{"b64": base64.b64encode(raw(NAN)[0]).decode()}] * 2},
     "non-finite values", None),
]


@pytest.mark.parametrize(("change", "words", "graph_sizes"), BAD)
def test_bad_bytes_requests_are_refused_by_the_server_and_by_the_graph(
        server, export, images, change, words, graph_sizes):
    status, answer = post(server, columnar(images, **change))
    assert status == 400 and words in answer["error"], answer
    if graph_sizes is not None:  # what TF Serving, running the graph, would answer
        function = tf.saved_model.load(export["saved_model"]).signatures["serving_bytes"]
        with pytest.raises(tf.errors.InvalidArgumentError):
            function(image_bytes=tf.constant(raw(images)), height=tf.constant(graph_sizes[0]),
                     width=tf.constant(graph_sizes[1]))


def test_a_bytes_request_missing_an_input_names_them(server, images):
    body = columnar(images)
    del body["inputs"]["width"]
    status, answer = post(server, body)
    assert status == 400 and "['height', 'image_bytes', 'width']" in answer["error"]


def test_a_wrong_serving_bytes_contract_is_refused_at_load(export):
    from pathlib import Path

    defs = read_signature_defs(Path(export["saved_model"]))
    check_signature(Path("v"), defs)
    defs["serving_bytes"].inputs["height"].dtype = types_pb2.DT_FLOAT
    with pytest.raises(ModelFormatError, match="serving_bytes 'height' is DT_FLOAT"):
        check_signature(Path("v"), defs)


def test_models_without_serving_bytes_get_json_from_the_client(tmp_path, images):
    # A version exported before serving_bytes existed: the auto client asks, then sends JSON;
    # a client that believed in bytes (the label moved back to such a version) falls back.
    model = build_unet(ModelConfig(base_filters=2, depth=2, dropout=0), np.full(3, .1),
                       np.full(3, .05))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serving_function(model, 4))
    archive.write_out(str(tmp_path / "old" / "1"), verbose=False)
    with launch_server(["--model-base-path", str(tmp_path / "old"), "--model-name", "tailseg"],
                       tmp_path / "server") as old:
        expected = RestClient(old.rest_url, binary=False).predict(images)
        auto = RestClient(old.rest_url)
        assert np.array_equal(auto.predict(images), expected) and auto.binary is False
        stale = RestClient(old.rest_url)
        stale.binary = True
        assert np.array_equal(stale.predict(images), expected) and stale.binary is False
        with pytest.raises(Exception, match="not found in signature def"):
            RestClient(old.rest_url, binary=True).predict(images)


@pytest.mark.parametrize(("body", "words"), [
    ({"signature_name": False, "inputs": [[[[0.1, 0.2, 0.3]]]]}, "must be a string value"),
    ({"signature_name": 0, "inputs": [[[[0.1, 0.2, 0.3]]]]}, "must be a string value"),
    # The signature is looked up before the inputs are read, as TF Serving's REST handler does.
    ({"signature_name": "nope", "inputs": {"image_bytes": [{"b64": "!"}]}}, "'nope' not found"),
])
def test_signature_names_are_checked_before_the_inputs(server, body, words):
    status, answer = post(server, body)
    assert status == 400 and words in answer["error"], answer


def test_grpc_sizes_must_be_int32_vectors_and_unknown_signatures_fail_precondition(server, images):
    from tailseg.serving.warmup import predict_request

    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target))
    request = predict_request(images, "tailseg", signature="serving_bytes")
    assert stub.Predict(request, timeout=30).outputs["probability"].tensor_shape.dim[1].size == 30
    for wrong in (np.array([30, 30], np.int64), np.array([[30, 30]], np.int32)):
        request.inputs["height"].CopyFrom(to_tensor_proto(wrong))
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'height' must be DT_INT32 of shape [N]" in error.value.details()
    request.model_spec.signature_name = "nope"
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # predict_util.cc
    assert 'Serving signature key "nope" not found.' in error.value.details()


def test_the_bytes_view_runs_in_sub_batches_and_hands_back_to_its_version(export):
    from pathlib import Path

    from tailseg.serving.version import load_version

    loaded = load_version("tailseg", Path(export["saved_model"]))
    view = loaded.serving("serving_bytes")
    assert view is loaded.serving("serving_bytes") and view.serving(None) is loaded
    assert view.serving("serving_bytes") is view
    batch = np.random.default_rng(5).uniform(.02, .3, (5, 16, 20, 3)).astype(np.float32)
    whole = loaded.predict(batch)
    # 320 pixels per image: chunks of 2 images, the last one alone
    assert np.array_equal(view.predict(batch, chunk_pixels=700), whole)
