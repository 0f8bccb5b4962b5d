"""`tailseg serve` end to end: a real server process on loopback, called with TF Serving's gRPC
stubs and plain HTTP. One tiny model (base_filters 2) exported once for the module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tailseg.backends import load_predictor, load_tf
from tailseg.config import ModelConfig
from tailseg.errors import ModelFormatError, ServingClientError
from tailseg.export import write_saved_model
from tailseg.model import build_unet
from tailseg.serving.client import GrpcClient, RestClient, client_from_url
from tailseg.serving.process import launch_server
from tailseg.serving.protocol import to_tensor_proto
from tailseg.serving.warmup import predict_request, write_warmup_file

MAX_REQUEST_BYTES = 300_000
MAX_PIXELS = 30_000


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """Version 1 in a TF Serving base path, with warm-up requests (no ONNX: not needed here;
    export_for_serving is tested in test_export_extras)."""
    model = build_unet(ModelConfig(base_filters=2, depth=2, dropout=0), np.full(3, .1),
                       np.full(3, .05))
    samples = np.random.default_rng(0).uniform(.02, .3, (2, 24, 40, 3)).astype(np.float32)
    version = tmp_path_factory.mktemp("serving") / "tailseg" / "1"
    write_saved_model(model, version, 4)
    write_warmup_file(version, samples, "tailseg")
    return {"saved_model": str(version)}


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    base = os.path.dirname(export["saved_model"])
    with pytest.MonkeyPatch.context() as patch:  # the allocator setting must come from tailseg
        patch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
        running = launch_server(
            ["--model-base-path", base, "--model-name", "tailseg", "--poll-seconds", "0.3",
             "--max-request-bytes", str(MAX_REQUEST_BYTES), "--max_pixels_in_flight",
             str(MAX_PIXELS)], tmp_path_factory.mktemp("server"))
    with running:
        yield running


@pytest.fixture(scope="module")
def reference(export):
    return load_tf(export["saved_model"])


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(.02, .3, (2, 30, 45, 3)).astype(np.float32)


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_launched_server_runs_with_tailsegs_allocator(server):
    # Issue 13: every process that runs TensorFlow gets TF_CPU_ALLOCATOR_USE_BFC=true, the
    # server launched by tools and tests too (read from the live process's environment).
    environ = open(f"/proc/{server.process.pid}/environ", "rb").read().split(b"\0")
    assert b"TF_CPU_ALLOCATOR_USE_BFC=true" in environ


def test_grpc_predictions_equal_in_process(server, reference, images):
    client = GrpcClient(server.grpc_target, "tailseg", timeout=30)
    np.testing.assert_allclose(client.predict(images), reference(images), atol=1e-6)
    # The same through the backends' URL form, as prediction uses it.
    predictor = load_predictor(f"grpc://{server.grpc_target}/tailseg/versions/1")
    assert predictor.backend == "grpc"
    np.testing.assert_allclose(predictor(images[:1]), reference(images[:1]), atol=1e-6)


def test_rest_predictions_equal_in_process_in_both_forms(server, reference, images):
    url = f"{server.rest_url}/v1/models/tailseg:predict"
    expected = reference(images)
    status, rows = http("POST", url, json.dumps({"instances": images.tolist()}).encode())
    assert status == 200
    np.testing.assert_allclose(np.array(rows["predictions"]), expected, atol=1e-6)
    named = {"signature_name": "serving_default", "inputs": {"image": images.tolist()}}
    status, columns = http("POST", url, json.dumps(named).encode())
    assert status == 200
    np.testing.assert_allclose(np.array(columns["outputs"]), expected, atol=1e-6)
    predictor = load_predictor(f"{server.rest_url}/v1/models/tailseg")
    np.testing.assert_allclose(predictor(images), expected, atol=1e-6)


def test_status_and_metadata_answer_over_rest_and_grpc(server):
    status, body = http("GET", f"{server.rest_url}/v1/models/tailseg")
    assert status == 200
    assert body["model_version_status"] == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                           "error_message": ""}}]
    status, meta = http("GET", f"{server.rest_url}/v1/models/tailseg/versions/1/metadata")
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert status == 200 and meta["model_spec"]["version"] == "1"
    assert signature["inputs"]["image"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["outputs"]["probability"]["tensor_shape"]["dim"]] == \
        ["-1", "-1", "-1", "1"]
    assert http("GET", f"{server.rest_url}/readyz") == (200, {"ready": True})

    channel = grpc.insecure_channel(server.grpc_target)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tailseg"
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    assert [(s.version, s.state) for s in response.model_version_status] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tailseg"
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
        request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert list(signatures.signature_def["serving_default"].inputs) == ["image"]
    assert response.model_spec.version.value == 1


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("tailseg:predict", b'{"instances": [[[[0.1, 0.2', 400, "JSON Parse error"),
    ("tailseg:predict", b'{"inputs": [[[[0.1, 0.2]]]]}', 400, "[N, H, W, 3]"),
    ("tailseg:predict", b'{"inputs": [[[["a", "b", "c"]]]]}', 400, "must be numbers"),
    ("tailseg:predict", b'{"instances": [[[[0.1, 0.2, 0.3]]], [[0.1]]]}', 400, "ragged"),
    ("tailseg:predict", b'{"image": [[[[0.1, 0.2, 0.3]]]]}', 400, "unknown request keys"),
    ("nomodel:predict", b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}', 404, "nomodel"),
    ("tailseg/versions/9:predict", b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}', 404, "9"),
    ("tailseg/labels/stable:predict", b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}', 404, "label"),
    ("tailseg/versions/9223372036854775808", None, 400, "Failed to convert version"),
    ("tailseg:predict", b"[" + b"0.12345," * (MAX_REQUEST_BYTES // 8) + b"0]", 413, "limit"),
    ("tailseg:classify", b'{"instances": []}', 501, "not implemented"),
    # 1e39 overflows float32 to Inf: refused by name (TF Serving would run it; see docs).
    ("tailseg:predict", b'{"inputs": [[[[1e39, 0.1, 0.2]]]]}', 400, "non-finite values"),
    ("tailseg:predict", b'{"inputs": [[[[NaN, 0.1, 0.2]]]]}', 400, "JSON Parse error"),
    # One image larger than the whole pixel budget: RESOURCE_EXHAUSTED -> 429, as http_server.cc.
    ("tailseg:predict", json.dumps({"inputs": [[[[0, 0, 0]] * 175] * 175]},
                                   separators=(",", ":")).encode(), 429, "exceeds the server's"),
])
def test_bad_rest_requests_get_clear_errors_and_serving_goes_on(server, path, body, status,
                                                                 words):
    method = "GET" if body is None else "POST"
    answer = http(method, f"{server.rest_url}/v1/models/{path}", body)
    assert answer[0] == status and words in answer[1]["error"], answer
    ok = http("POST", f"{server.rest_url}/v1/models/tailseg:predict",
              b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}')
    assert ok[0] == 200 and np.array(ok[1]["outputs"]).shape == (1, 1, 1, 1)


def test_every_method_and_path_answers_json_and_query_strings_are_ignored(server):
    # http_rest_api_handler.cc: under /v1/ a POST must match the prediction pattern and a GET
    # the status pattern; anything else is 400 "Malformed request: <method> <path>".
    for method, path, status in [
            ("PUT", "/v1/models/tailseg", 400), ("DELETE", "/v1/models/tailseg", 400),
            ("PATCH", "/v1/models/tailseg:predict", 400), ("OPTIONS", "/v1/models/tailseg", 400),
            ("GET", "/v1/models/tailseg:predict", 400), ("POST", "/v1/models/tailseg", 400),
            ("GET", "/v1/models/tailseg/versions/1/labels/x", 400),
            ("POST", "/v1/models/tailseg:PREDICT", 400), ("DELETE", "/nowhere", 404),
            ("BREW", "/v1/models/tailseg", 501)]:
        answer = http(method, server.rest_url + path)  # http() parses the body as JSON
        assert answer[0] == status and answer[1]["error"], (method, path, answer)
        if status == 400:
            assert answer[1]["error"] == f"Malformed request: {method} {path}"
    assert http("GET", f"{server.rest_url}/v1/models") == \
        (400, {"error": "Missing model name in request."})
    assert http("GET", f"{server.rest_url}/v1/models/tailseg?debug=1")[0] == 200
    status, body = http("POST", f"{server.rest_url}/v1/models/tailseg:predict?debug=1&x",
                        b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}')
    assert status == 200 and np.array(body["outputs"]).shape == (1, 1, 1, 1)


def test_rest_paths_match_as_tf_serving_matches_them(server):
    # The patterns are case-insensitive (RE2 "(?i)"), the captured subresource is compared
    # as written ("/METADATA" asks for the status), and the model name is URL-decoded.
    one = {"version": "1", "state": "AVAILABLE",
           "status": {"error_code": "OK", "error_message": ""}}
    assert http("GET", f"{server.rest_url}/V1/MODELS/tailseg") == \
        (200, {"model_version_status": [one]})
    assert http("GET", f"{server.rest_url}/v1/models/tailseg/METADATA")[1] == \
        {"model_version_status": [one]}
    assert http("GET", f"{server.rest_url}/v1/Models/tailseg/Versions/1/metadata")[0] == 200
    assert http("GET", f"{server.rest_url}/v1/models/%74ailseg")[0] == 200
    status, body = http("POST", f"{server.rest_url}/V1/models/%74ailseg:predict",
                        b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}')
    assert status == 200 and np.array(body["outputs"]).shape == (1, 1, 1, 1)
    assert http("GET", f"{server.rest_url}/v1/models/nomodel") == \
        (404, {"error": "Could not find any versions of model nomodel"})
    # get_model_status_impl.cc reads no version label: any label lists every version.
    assert http("GET", f"{server.rest_url}/v1/models/tailseg/labels/nolabel") == \
        (200, {"model_version_status": [one]})


def _malformed(change) -> predict_pb2.PredictRequest:
    request = predict_request(np.full((1, 2, 2, 3), .1, np.float32), "tailseg")
    change(request.inputs["image"])
    return request


def _set_dims(tensor, *sizes) -> None:
    for dim, size in zip(tensor.tensor_shape.dim, sizes, strict=True):
        dim.size = size


@pytest.mark.parametrize(("change", "words"), [
    (lambda t: _set_dims(t, 1, -2, 2, 3), "negative dimension"),
    (lambda t: _set_dims(t, 2**40, 2**40, 2**40, 3), f"needs {2**120 * 3} values"),
    (lambda t: _set_dims(t, 2**62, 2**62, 1, 3), "values but the tensor holds 12"),
    (lambda t: setattr(t, "tensor_content", t.tensor_content[:-1]), "not a multiple of 4"),
    (lambda t: setattr(t, "tensor_content", t.tensor_content[:-4]), "needs 12 values"),
    (lambda t: setattr(t, "tensor_content", np.full(12, np.nan, np.float32).tobytes()),
     "12 non-finite values"),
    (lambda t: setattr(t, "tensor_content", np.r_[np.zeros(11), np.inf].astype(
        np.float32).tobytes()), "the first at [n, y, x, band] = [0, 1, 1, 2]"),
    (lambda t: setattr(t.tensor_shape, "unknown_rank", True), "unknown rank"),
])
def test_malformed_tensors_are_invalid_argument(server, change, words):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(_malformed(change), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert words in raised.value.details()


def test_bad_grpc_requests_get_clear_errors_and_serving_goes_on(server, images):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target))
    wrong_dtype = predict_request(images, "tailseg")
    wrong_dtype.inputs["image"].CopyFrom(to_tensor_proto(images.astype(np.float64)))
    wrong_name = predict_pb2.PredictRequest()
    wrong_name.model_spec.name = "tailseg"
    wrong_name.inputs["images"].CopyFrom(to_tensor_proto(images))
    huge = np.zeros((1, 200, 200, 3), np.float32)  # 40 000 pixels > the 30 000 pixel budget
    cases = [(wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, "dtype float64"),
             (predict_request(images[..., :2], "tailseg"), grpc.StatusCode.INVALID_ARGUMENT,
              "[N, H, W, 3]"),
             (wrong_name, grpc.StatusCode.INVALID_ARGUMENT, "['images']"),
             (predict_request(images, "nomodel"), grpc.StatusCode.NOT_FOUND, "nomodel"),
             (predict_request(images, "tailseg", version=9), grpc.StatusCode.NOT_FOUND, "9"),
             (predict_request(huge, "tailseg"), grpc.StatusCode.RESOURCE_EXHAUSTED,
              "40000 pixels exceeds")]
    for request, code, words in cases:
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(request, timeout=30)
        assert raised.value.code() == code and words in raised.value.details(), raised.value
    with pytest.raises(ServingClientError, match="NOT_FOUND"):
        GrpcClient(server.grpc_target, "tailseg", version=9, retries=0).predict(images)
    assert GrpcClient(server.grpc_target).predict(images).shape == (2, 30, 45, 1)


def _filtered(images, *aliases, bad_input: bool = False) -> predict_pb2.PredictRequest:
    request = predict_request(images[..., :2] if bad_input else images, "tailseg")
    request.output_filter.extend(aliases)
    return request


def test_grpc_requests_are_checked_in_tf_servings_order(server, images):
    # predict_impl.cc / get_model_*_impl.cc: no ModelSpec -> INVALID_ARGUMENT "Missing
    # ModelSpec"; ServerCore::ServableRequestFromModelSpec: no name -> INVALID_ARGUMENT; the
    # status lookup has no such check (no versions of "" -> NOT_FOUND). predict_util.cc reads
    # the inputs, then the output filter: an unknown or repeated alias is INVALID_ARGUMENT.
    channel = grpc.insecure_channel(server.grpc_target)
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    status = model_service_pb2_grpc.ModelServiceStub(channel)
    no_name = predict_request(images, "")
    cases = [
        (predict.Predict, predict_pb2.PredictRequest(), "INVALID_ARGUMENT", "Missing ModelSpec"),
        (predict.Predict, no_name, "INVALID_ARGUMENT", "ModelSpec has no name specified."),
        (predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"]), "INVALID_ARGUMENT", "Missing ModelSpec"),
        (predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": ""}), "INVALID_ARGUMENT", "at least one metadata_field"),
        (predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": ""}, metadata_field=["signature_def"]), "INVALID_ARGUMENT",
         "ModelSpec has no name specified."),
        (status.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(),
         "INVALID_ARGUMENT", "Missing ModelSpec"),
        (status.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(
            model_spec={"name": ""}), "NOT_FOUND", "Could not find any versions of model "),
        (predict.Predict, _filtered(images, "nope"), "INVALID_ARGUMENT",
         "output tensor alias not found in signature: nope Outputs expected to be in the set "
         "{probability}."),
        (predict.Predict, _filtered(images, "probability", "probability"), "INVALID_ARGUMENT",
         "duplicate output tensor alias: probability"),
        (predict.Predict, _filtered(images, "nope", bad_input=True), "INVALID_ARGUMENT",
         "[N, H, W, 3]"),
    ]
    for call, request, code, words in cases:
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=30)
        assert raised.value.code() == getattr(grpc.StatusCode, code), raised.value
        assert words in raised.value.details(), raised.value
    answer = predict.Predict(_filtered(images, "probability"), timeout=30)
    assert list(answer.outputs) == ["probability"]
    # A version label in a status request is not read: every version is listed.
    request = get_model_status_pb2.GetModelStatusRequest(
        model_spec={"name": "tailseg", "version_label": "nolabel"})
    assert [s.version for s in status.GetModelStatus(request, timeout=10).model_version_status] \
        == [1]


def test_clients_retry_then_fail_clearly_without_a_server():
    with pytest.raises(ServingClientError, match="unreachable after 1 retries"):
        RestClient("http://127.0.0.1:9", retries=1, backoff=0.01, timeout=2).status()
    with pytest.raises(ServingClientError, match="UNAVAILABLE"):
        GrpcClient("127.0.0.1:9", retries=1, backoff=0.01, timeout=2).status()
    with pytest.raises(ModelFormatError, match="not a model server URL"):
        client_from_url("grpc://127.0.0.1:8500")


def test_serve_refuses_a_missing_base_path(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tailseg.cli", "serve", "--model-base-path",
                             str(tmp_path / "absent")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "model base path not found" in result.stderr


def test_a_new_version_is_served_without_restart(server, export, reference, images):
    base = os.path.dirname(export["saved_model"])
    staging = os.path.join(base, ".2.staging")
    shutil.copytree(export["saved_model"], staging)
    os.rename(staging, os.path.join(base, "2"))  # published atomically, as exports are
    deadline, states = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        status = http("GET", f"{server.rest_url}/v1/models/tailseg")[1]
        states = {s["version"]: s["state"] for s in status["model_version_status"]}
        if states == {"2": "AVAILABLE", "1": "END"}:
            break
        time.sleep(0.2)
    # The default policy serves the latest version only: version 1 is unloaded.
    assert states == {"2": "AVAILABLE", "1": "END"}
    client = GrpcClient(server.grpc_target, "tailseg", version=2)
    np.testing.assert_allclose(client.predict(images), reference(images), atol=1e-6)
    assert GrpcClient(server.grpc_target, "tailseg").status().model_version_status[0].version == 2
    assert http("GET", f"{server.rest_url}/v1/models/tailseg/versions/1")[0] == 200  # END
    assert http("POST", f"{server.rest_url}/v1/models/tailseg/versions/1:predict",
                b'{"inputs": [[[[0.1, 0.2, 0.3]]]]}')[0] == 404
