"""Clients of a TF Serving(-compatible) server: REST and gRPC, with timeouts and retries.

Both take float32 reflectance [N, H, W, 3] and return probabilities [N, H, W, 1], like the
in-process backends, and `as_predictor()` wraps them as a tailseg.predictor.Predictor. Only
connection failures and UNAVAILABLE (HTTP 503) are retried, with exponential back-off; a
request the server rejects fails at once with ServingClientError.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import numpy as np
import orjson

from tailseg.errors import ModelFormatError, ServingClientError
from tailseg.export import BYTES_INPUTS, BYTES_SIGNATURE, OUTPUT_NAME
from tailseg.predictor import Predictor


def _with_retries(call: Callable, retries: int, backoff: float, retryable: Callable):
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as error:
            if attempt == retries or not retryable(error):
                raise
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


class RestClient:
    """TF Serving REST API client (columnar "inputs" requests).

    Images go as base64 raw float32 to the "serving_bytes" signature when the model has it
    (binary=None: asked once from the model's metadata; a later "signature not found", after a
    rollback to an older version, switches this client to JSON), else as JSON numbers to
    "serving_default"; both give the same probabilities. binary=True or False forces one.
    """

    def __init__(self, url: str = "http://127.0.0.1:8501", model_name: str = "tailseg",
                 version: int | None = None, label: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.2, binary: bool | None = None):
        self.url, self.model_name, self.timeout = url.rstrip("/"), model_name, timeout
        self.retries, self.backoff, self.binary = retries, backoff, binary
        self._ask_binary = binary is None
        self.model_url = f"{self.url}/v1/models/{model_name}" + (
            f"/versions/{version}" if version is not None else
            f"/labels/{label}" if label is not None else "")

    def _request(self, url: str, body: dict | None = None, decode: Callable = orjson.loads):
        data = None if body is None else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        request = urllib.request.Request(url, data=data,
                                         headers={"Content-Type": "application/json"})

        def call():
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return decode(response.read())

        def retryable(error: Exception) -> bool:
            if isinstance(error, urllib.error.HTTPError):
                return error.code == 503
            return isinstance(error, urllib.error.URLError | ConnectionError | TimeoutError)

        try:
            return _with_retries(call, self.retries, self.backoff, retryable)
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except ValueError:
                message = error.reason
            raise ServingClientError(f"{url}: HTTP {error.code}: {message}", error.code) \
                from error
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            raise ServingClientError(f"{url}: unreachable after {self.retries} retries "
                                     f"({error})") from error

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.binary is None:
            signatures = self.metadata()["metadata"]["signature_def"]["signature_def"]
            self.binary = BYTES_SIGNATURE in signatures
        try:
            return self._predict(images)
        except ServingClientError as error:
            # A rollback to a version exported before serving_bytes existed: JSON from now on.
            if not (self._ask_binary and self.binary and error.status == 400
                    and "not found in signature def" in str(error)):
                raise
            self.binary = False
            return self._predict(images)

    def _predict(self, images: np.ndarray) -> np.ndarray:
        from tailseg.serving.protocol import parse_predict_response_body, raw_images

        if self.binary:
            if images.ndim != 4:
                raise ServingClientError(f"{self.model_url}: images must be [N, H, W, 3], got "
                                         f"shape {list(images.shape)}")
            count, height, width, _ = images.shape
            raw = [{"b64": base64.b64encode(value).decode("ascii")}
                   for value in raw_images(images)]
            body = {"signature_name": BYTES_SIGNATURE,
                    "inputs": dict(zip(BYTES_INPUTS, (raw, [height] * count, [width] * count),
                                       strict=True))}
        else:  # orjson writes the float32 array in its shortest exact form
            body = {"inputs": images}
        return self._request(f"{self.model_url}:predict", body, parse_predict_response_body)

    def status(self) -> dict:
        """Every version's state. TF Serving reads no label here (get_model_status_impl.cc):
        a client made with a label lists every version; metadata() resolves the label."""
        return self._request(self.model_url)

    def metadata(self) -> dict:
        return self._request(f"{self.model_url}/metadata")

    def as_predictor(self) -> Predictor:
        return Predictor(self.predict, "rest", self.model_url, {"model_name": self.model_name})


class GrpcClient:
    """TF Serving gRPC client (PredictionService and ModelService stubs)."""

    def __init__(self, target: str = "127.0.0.1:8500", model_name: str = "tailseg",
                 version: int | None = None, label: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.2, max_message_bytes: int = 2**30):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target, self.model_name, self.version, self.label = target, model_name, version, label
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _call(self, method, request):
        import grpc

        def retryable(error: Exception) -> bool:
            return isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE

        try:
            return _with_retries(lambda: method(request, timeout=self.timeout), self.retries,
                                 self.backoff, retryable)
        except grpc.RpcError as error:
            raise ServingClientError(f"grpc://{self.target}/{self.model_name}: "
                                     f"{error.code().name}: {error.details()}",
                                     error.code().name) from error

    def _spec(self, spec) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label

    def predict(self, images: np.ndarray) -> np.ndarray:
        from tailseg.serving.protocol import from_tensor_proto
        from tailseg.serving.warmup import predict_request

        request = predict_request(np.asarray(images, np.float32), self.model_name, self.version,
                                  self.label)
        response = self._call(self.predictions.Predict, request)
        return from_tensor_proto(response.outputs[OUTPUT_NAME], OUTPUT_NAME)

    def status(self):
        """Every version's state, or the client's version's; a label is not read by TF
        Serving (get_model_status_impl.cc): metadata() resolves it."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        return self._call(self.models.GetModelStatus, request)

    def metadata(self):
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        return self._call(self.predictions.GetModelMetadata, request)

    def close(self) -> None:
        self.channel.close()

    def as_predictor(self) -> Predictor:
        return Predictor(self.predict, "grpc", f"grpc://{self.target}/{self.model_name}",
                         {"model_name": self.model_name})


_GRPC_URL = re.compile(r"^grpc://(?P<target>[^/]+)/(?P<name>[^/]+)"
                       r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/]+))?/?$")
_REST_URL = re.compile(r"^(?P<base>https?://[^/]+)/v1/models/(?P<name>[^/:]+)"
                       r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?/?$")


def client_from_url(url: str, timeout: float = 60.0, retries: int = 3) -> RestClient | GrpcClient:
    """grpc://HOST:PORT/NAME[/versions/V|/labels/L] or
    http://HOST:PORT/v1/models/NAME[/versions/V|/labels/L]."""
    if match := _GRPC_URL.match(url):
        return GrpcClient(match["target"], match["name"], _int(match["version"]), match["label"],
                          timeout, retries)
    if match := _REST_URL.match(url):
        return RestClient(match["base"], match["name"], _int(match["version"]), match["label"],
                          timeout, retries)
    raise ModelFormatError(f"{url}: not a model server URL; use grpc://HOST:PORT/NAME or "
                           "http://HOST:PORT/v1/models/NAME (optionally /versions/V or /labels/L)")


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None
