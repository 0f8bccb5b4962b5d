"""TF Serving's REST API over the standard library's ThreadingHTTPServer.

GET  /v1/models/NAME[/versions/V | /labels/L]            model status
GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signature metadata
POST /v1/models/NAME[/versions/V | /labels/L]:predict    {"instances": ...} or {"inputs": ...}
GET  /readyz                                             200 when every model has a version
Errors answer {"error": "..."} with TF Serving's status codes (400, 404, ...), plus 405, 411
and 413 (body over the size limit).
"""

from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from tailseg.errors import ServingRequestError
from tailseg.serving.grpc_api import metadata_response, status_response
from tailseg.serving.protocol import HTTP_STATUS, parse_predict_body, predict_response_json
from tailseg.serving.registry import ModelRegistry

logger = logging.getLogger(__name__)
ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?P<suffix>/metadata|:predict|:classify|:regress)?$")
DRAIN_FACTOR = 4  # oversize bodies up to this multiple of the limit are read and discarded


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def make_handler(registry: ModelRegistry, max_request_bytes: int):
    """A request handler class bound to a registry and a body size limit."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections
        server_version = "tailseg-serve"

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            logger.debug("%s %s", self.address_string(), format % args)

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            try:
                status, payload = 200, self._route(method)
            except ServingRequestError as error:
                status, payload = HTTP_STATUS.get(error.code, 400), {"error": str(error)}
            except HttpError as error:
                status, payload = error.status, {"error": str(error)}
            except Exception as error:  # answer 500 and keep serving
                logger.exception("REST request failed")
                status, payload = 500, {"error": f"{type(error).__name__}: {error}"}
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self, method: str):
            if self.path == "/readyz" and method == "GET":
                if not registry.ready():
                    raise HttpError(503, "not ready: no version loaded yet")
                return {"ready": True}
            match = ROUTE.match(self.path)
            if match is None:
                self._discard_body()
                raise HttpError(404, f"Malformed request: {method} {self.path}")
            name, suffix, label = match["name"], match["suffix"], match["label"]
            version = int(match["version"]) if match["version"] else None
            if suffix in (None, "/metadata") and method != "GET" or \
                    suffix == ":predict" and method != "POST":
                self._discard_body()
                raise HttpError(405, f"{method} is not allowed on {self.path}")
            match suffix:
                case None:
                    return _json(status_response(registry, name, version, label))
                case "/metadata":
                    response = metadata_response(registry, name, version, label)
                    signatures = get_model_metadata_pb2.SignatureDefMap()
                    response.metadata["signature_def"].Unpack(signatures)
                    return {"model_spec": _json(response.model_spec),
                            "metadata": {"signature_def": _json(signatures)}}
                case ":predict":
                    images, row_format, signature = parse_predict_body(self._read_body())
                    loaded = registry.resolve(name, version, label)
                    if signature not in (None, "", *loaded.signature_defs):
                        raise ServingRequestError(f"Serving signature name: {signature!r} not "
                                                  "found in signature def")
                    return predict_response_json(loaded.predict(images), row_format)
            self._discard_body()
            raise HttpError(501, f"{suffix[1:]} is not implemented; this model serves :predict")

        def _content_length(self) -> int:
            try:
                return int(self.headers.get("Content-Length", ""))
            except ValueError:
                return -1

        def _discard_body(self) -> None:
            length = self._content_length()
            if 0 < length <= DRAIN_FACTOR * max_request_bytes:
                self.rfile.read(length)
            elif length != 0 and self.command == "POST":
                self.close_connection = True

        def _read_body(self) -> bytes:
            length = self._content_length()
            if length < 0:
                self.close_connection = True
                raise HttpError(411, "a Content-Length header is required")
            if length > max_request_bytes:
                self._discard_body()
                raise HttpError(413, f"request body of {length} bytes exceeds the limit of "
                                     f"{max_request_bytes} bytes (--max-request-bytes)")
            return self.rfile.read(length)

    return Handler


def make_rest_server(registry: ModelRegistry, host: str, port: int,
                     max_request_bytes: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(registry, max_request_bytes))
    server.daemon_threads = True
    return server
