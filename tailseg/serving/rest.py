"""TF Serving's REST API over the standard library's ThreadingHTTPServer, with limits.

GET  /v1/models/NAME[/versions/V | /labels/L]            model status
GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signature metadata
POST /v1/models/NAME[/versions/V | /labels/L]:predict    {"instances": ...} or {"inputs": ...}
GET  /readyz                                             200 when every model has a version
GET  <prometheus path>                                   metrics, when monitoring is enabled
Every answer, errors included and whatever the method or path, is JSON {"error": "..."} with TF
Serving's status codes (400, 404, 429, 504, ...), plus 405, 408, 411, 413 and 503 (connection
cap). Query strings are ignored, as TF Serving routes on the URI path only.

Limits: one thread per connection, at most max_connections at once (more are answered 503 and
closed); every socket read times out after the REST timeout (--rest_api_timeout_in_ms), which
also bounds the whole request; a body whose declared Content-Length exceeds the limit is refused
before any of it is read, then the connection is closed after a short, bounded drain. A client
that closes its connection while its prediction waits for the pixel budget, a batch or the next
sub-batch cancels it (CANCELLED, as a cancelled gRPC call), like a passed deadline (504).
"""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from tailseg.errors import ServingRequestError
from tailseg.serving.grpc_api import ServingRuntime, metadata_response, status_response
from tailseg.serving.numeric_json import preload_parser
from tailseg.serving.protocol import HTTP_STATUS, parse_predict_body, predict_response_json

logger = logging.getLogger(__name__)
# http_rest_api_util.cc: requests whose path fully matches /v1/.* (any case) reach the API
# handler; a POST must match the prediction pattern and a GET the status one (RE2 FullMatch,
# case-insensitive), anything else is 400 "Malformed request". The captured method and
# subresource are then compared case-sensitively ("PREDICT" is malformed, "/METADATA" asks for
# the status), and the name and label are URL-decoded.
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
PREDICT_ROUTE = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                           r":(classify|regress|predict)", re.IGNORECASE)
STATUS_ROUTE = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|"
                          r"(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)
INT64_MAX = 2**63 - 1
SMALL_BODY = 64 * 2**10  # unread bodies up to this size are drained to keep the connection
LINGER_SECONDS = 2.0  # after refusing a body, discard what the client still sends this long
DECODE_SLOTS = 2  # JSON bodies decoded at once (a 64 MiB body becomes ~600 MB of objects)


@dataclass(frozen=True)
class RestLimits:
    max_request_bytes: int = 64 * 2**20
    timeout: float = 30.0  # seconds: each socket read, and the whole request
    max_connections: int = 64
    metrics_path: str | None = None  # None: monitoring disabled


class HttpError(Exception):
    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.close = status, close


@dataclass(frozen=True)
class Route:
    """A model request as TF Serving's ParseModelInfo reads it."""

    name: str
    version: int | None
    label: str | None
    action: str  # "predict", "classify", "regress" (POST); "metadata" or "" (GET)

    @property
    def entrypoint(self) -> str:
        return self.action or "GetModelStatus"


def parse_route(method: str, path: str) -> Route:
    """The model request of a /v1/ path, or HttpError 400 as http_rest_api_handler.cc."""
    pattern = {"POST": PREDICT_ROUTE, "GET": STATUS_ROUTE}.get(method)
    match = pattern.fullmatch(path) if pattern else None
    if match is None:
        raise HttpError(400, f"Malformed request: {method} {path}")
    name, version, label, action = match.groups(default="")
    if version and int(version) > INT64_MAX:
        raise HttpError(400, f"Failed to convert version: {version} to numeric.")
    return Route(unquote(name), int(version) if version else None,
                 unquote(label) if label else None, action)


def _json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on simultaneous connections (one thread each)."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int):
        super().__init__(address, handler)
        self.max_connections, self.active = max_connections, 0
        self._count_lock = threading.Lock()

    def process_request(self, request, client_address):
        with self._count_lock:
            full = self.active >= self.max_connections
            if not full:
                self.active += 1
        if full:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        # ThreadingMixIn's body, with the slot freed before the connection is closed: a client
        # that sees the close may connect again at once and must not be refused.
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._count_lock:
                self.active -= 1
            self.shutdown_request(request)

    def _refuse(self, request: socket.socket) -> None:
        body = json.dumps({"error": f"server busy: {self.max_connections} connections open "
                                    "(--rest_api_num_threads); retry later"}).encode()
        try:
            request.settimeout(0.2)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                            b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(body), body))
            request.shutdown(socket.SHUT_WR)
            request.recv(2**16)  # what the client sent: closing with it unread would reset
        except OSError:
            pass
        self.shutdown_request(request)


def make_handler(runtime: ServingRuntime, limits: RestLimits):
    """A request handler class bound to the runtime and the limits."""
    registry = runtime.registry
    decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections
        server_version = "tailseg-serve"
        timeout = limits.timeout  # socket timeout: a stalled client is dropped after this

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            logger.debug("%s %s", self.address_string(), format % args)

        def send_error(self, code, message=None, explain=None):
            """The base class's errors (bad request line, unknown method...) as JSON too."""
            self.close_connection = True
            self._answer(code, {"error": message or explain or self.responses.get(
                code, ("error",))[0]})

        def handle_expect_100(self):
            # Refuse an oversize body before the client sends it (curl sends Expect: 100).
            if self._content_length() > limits.max_request_bytes:
                self.send_error(413, self._too_large_message())
                return False
            return super().handle_expect_100()

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        def do_DELETE(self):
            self._dispatch("DELETE")

        def do_PATCH(self):
            self._dispatch("PATCH")

        def do_OPTIONS(self):
            self._dispatch("OPTIONS")

        def _dispatch(self, method: str) -> None:
            started, deadline = time.perf_counter(), time.monotonic() + limits.timeout
            path = urlsplit(self.path).path  # TF Serving ignores the query string
            self._body_read, self._linger, self._route_info = False, False, None
            try:
                status, code, payload = 200, "OK", self._route(method, path, deadline)
            except ServingRequestError as error:
                status, code = HTTP_STATUS.get(error.code, 400), error.code
                payload = {"error": str(error)}
            except HttpError as error:
                status, payload = error.status, {"error": str(error)}
                code = {501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}.get(status, "INVALID_ARGUMENT")
                self._linger |= error.close
            except Exception as error:  # answer 500 and keep serving
                logger.exception("REST request failed")
                status, code = 500, "INTERNAL"
                payload = {"error": f"{type(error).__name__}: {error}"}
            if self._route_info is not None:  # model requests only: not probes, scrapes
                runtime.record(self._route_info.name, "rest", self._route_info.entrypoint, code,
                               started)
            if not self._body_read:
                self._skip_body()
            self._answer(status, payload)
            if self._linger:
                self._lingering_close()

        def _answer(self, status: int, payload, content_type: str = "application/json"):
            if isinstance(payload, tuple):
                payload, content_type = payload
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            try:
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
            except OSError:  # the client left (e.g. it gave up on a cancelled request)
                self.close_connection = True

        def _route(self, method: str, path: str, deadline: float):
            if path == "/readyz" and method == "GET":
                if not registry.ready():
                    raise HttpError(503, "not ready: no version loaded yet")
                return {"ready": True}
            if limits.metrics_path and path == limits.metrics_path and method == "GET":
                return runtime.metrics.exposition()
            if not API_PATH.fullmatch(path):
                raise HttpError(404, f"Not found: {path}")
            route = self._route_info = parse_route(method, path)
            name, version, label = route.name, route.version, route.label
            match method, route.action:
                case "GET", "metadata":
                    if not name:
                        raise HttpError(400, "Missing model name in request.")
                    response = metadata_response(registry, name, version, label)
                    signatures = get_model_metadata_pb2.SignatureDefMap()
                    response.metadata["signature_def"].Unpack(signatures)
                    return {"model_spec": _json(response.model_spec),
                            "metadata": {"signature_def": _json(signatures)}}
                case "GET", _:  # the status; "/METADATA" lands here too, as in TF Serving
                    if not name:
                        raise HttpError(400, "Missing model name in request.")
                    # get_model_status_impl.cc reads only the version: a label is ignored
                    # and every version of the model is listed.
                    return _json(status_response(registry, name, version))
                case "POST", "predict":
                    loaded = registry.resolve(name, version, label)
                    body = self._read_body(deadline)
                    with decode_slots:
                        images, row_format, signature = parse_predict_body(
                            body, loaded.signature_defs)
                    del body
                    return predict_response_json(runtime.predict(
                        loaded.serving(signature), images, deadline, self._client_connected),
                        row_format)
                case "POST", "classify" | "regress":
                    raise HttpError(501, f"{route.action} is not implemented; this model "
                                         "serves :predict")
            raise HttpError(400, f"Malformed request: {method} {path}")

        def _client_connected(self) -> bool:
            """False once the client has closed its side: the socket reads as ended. (Bytes a
            client sends ahead, such as its next request, leave it connected.)"""
            try:
                if not select.select([self.connection], [], [], 0)[0]:
                    return True
                return self.connection.recv(1, socket.MSG_PEEK) != b""
            except (OSError, ValueError):  # reset, or already closed
                return False

        def _content_length(self) -> int:
            try:
                return int(self.headers.get("Content-Length", ""))
            except ValueError:
                return -1

        def _too_large_message(self) -> str:
            return (f"request body of {self._content_length()} bytes exceeds the limit of "
                    f"{limits.max_request_bytes} bytes (--max_request_bytes)")

        def _skip_body(self) -> None:
            """Keep the connection usable after an unread body, or close it if that is big."""
            length = self._content_length()
            if 0 < length <= SMALL_BODY:
                try:
                    self.rfile.read(length)
                except OSError:
                    self.close_connection = True
            elif length != 0 and (length > 0 or "Transfer-Encoding" in self.headers or
                                  self.command in ("POST", "PUT", "PATCH")):
                self.close_connection, self._linger = True, True

        def _read_body(self, deadline: float) -> bytes:
            length = self._content_length()
            if length < 0:
                raise HttpError(411, "a Content-Length header is required", close=True)
            if length > limits.max_request_bytes:
                raise HttpError(413, self._too_large_message(), close=True)
            self._body_read = True
            body, remaining = bytearray(), length
            try:
                while remaining:
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    chunk = self.rfile.read(min(remaining, 2**20))
                    if not chunk:
                        raise HttpError(400, f"body ended after {len(body)} of {length} bytes",
                                        close=True)
                    body += chunk
                    remaining -= len(chunk)
            except TimeoutError as error:
                raise HttpError(408, f"request body not received within {limits.timeout:g} s "
                                     "(--rest_api_timeout_in_ms)", close=True) from error
            return bytes(body)

        def _lingering_close(self) -> None:
            """Stop writing, discard what the client still sends for a moment, then close: the
            client reads our answer instead of a connection reset. Memory stays bounded."""
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(0.5)
                until = time.monotonic() + LINGER_SECONDS
                while time.monotonic() < until and self.connection.recv(2**16):
                    pass
            except OSError:
                pass

    return Handler


def make_rest_server(runtime: ServingRuntime, host: str, port: int,
                     limits: RestLimits) -> BoundedHTTPServer:
    preload_parser()  # else the first :predict pays pandas' import (~0.3 s)
    return BoundedHTTPServer((host, port), make_handler(runtime, limits), limits.max_connections)
