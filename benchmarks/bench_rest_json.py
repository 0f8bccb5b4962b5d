"""Where REST time goes for one 448 x 448 chip: each JSON step the REST path adds over gRPC,
timed alone on the same real chips, against the budget the 1.5x target leaves.

    .venv/bin/python benchmarks/bench_rest_json.py [--grpc-p50-ms 120]

Steps (all on the code paths `tailseg serve` and `RestClient` run): the client encodes the
request (orjson, float32 shortest form), the server decodes it (fast numeric path and, for
comparison, the general orjson path), the server encodes the probabilities, the client decodes
them; plus one loopback HTTP round trip of the same byte counts through http.server and
urllib (no JSON work). With REST p50 <= 1.5 x gRPC p50 as the target, the REST-only work must
fit in 0.5 x the gRPC p50 given (take it from benchmarks/results/serving.json of the same
machine). Also the same steps for the serving_bytes form (base64 raw float32, RestClient's
default), under "serving_bytes". Writes benchmarks/results/rest_json.json.
"""

from __future__ import annotations

import argparse
import base64
import gc
import os
import statistics
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serving import real_chips  # noqa: E402
from benchmarks.common import cpu, write_result  # noqa: E402
from tailseg.export import BYTES_INPUTS, BYTES_SIGNATURE  # noqa: E402
from tailseg.serving.protocol import (  # noqa: E402
    parse_predict_body,
    parse_predict_response_body,
    predict_response_json,
    raw_images,
)


def median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 1)


def loopback_round_trip_ms(request_bytes: int, response_bytes: int, repeats: int) -> float:
    """One POST of request_bytes answered with response_bytes, http.server and urllib."""
    answer = b"0" * response_bytes

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002
            pass

        def do_POST(self):
            remaining = int(self.headers["Content-Length"])
            while remaining:
                remaining -= len(self.rfile.read(min(remaining, 2**20)))
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, body = f"http://127.0.0.1:{server.server_address[1]}/", b"0" * request_bytes
    try:
        def call():
            with urllib.request.urlopen(urllib.request.Request(url, data=body)) as response:
                response.read()
        return median_ms(call, repeats)
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/tailings-br")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--grpc-p50-ms", type=float, default=None,
                        help="gRPC p50 of the same machine (serving.json) for the budget line")
    args = parser.parse_args()
    chips = real_chips(args.data, 1)
    probability = np.random.default_rng(0).random((1, 448, 448, 1), dtype=np.float32)
    request = orjson.dumps({"inputs": chips}, option=orjson.OPT_SERIALIZE_NUMPY)
    response = predict_response_json(probability, row_format=False)
    steps = {
        "client_encode_request": lambda: orjson.dumps({"inputs": chips},
                                                      option=orjson.OPT_SERIALIZE_NUMPY),
        "server_decode_request": lambda: parse_predict_body(request),
        "server_encode_response": lambda: predict_response_json(probability, False),
        "client_decode_response": lambda: parse_predict_response_body(response),
    }
    gc.collect()
    timings = {name: median_ms(call, args.repeats) for name, call in steps.items()}
    timings["loopback_http_round_trip"] = loopback_round_trip_ms(len(request), len(response),
                                                                 args.repeats)
    os.environ["TAILSEG_FAST_JSON"] = "0"  # the general orjson path, for comparison
    try:
        general_ms = median_ms(lambda: parse_predict_body(request), max(3, args.repeats // 3))
    finally:
        del os.environ["TAILSEG_FAST_JSON"]
    total = round(sum(timings.values()), 1)
    # The serving_bytes form of the same request (RestClient's default when the model has it).
    def bytes_body() -> bytes:
        raw = base64.b64encode(raw_images(chips[:1])[0]).decode("ascii")
        return orjson.dumps({"signature_name": BYTES_SIGNATURE, "inputs": dict(zip(
            BYTES_INPUTS, ([{"b64": raw}], [448], [448]), strict=True))})
    binary = bytes_body()
    bytes_steps = {"client_encode_request": median_ms(bytes_body, args.repeats),
                   "server_decode_request": median_ms(lambda: parse_predict_body(binary),
                                                      args.repeats),
                   "server_encode_response": timings["server_encode_response"],
                   "client_decode_response": timings["client_decode_response"],
                   "loopback_http_round_trip": loopback_round_trip_ms(
                       len(binary), len(response), args.repeats)}
    result = {"cpu": cpu(), "request_bytes": len(request), "response_bytes": len(response),
              "steps_ms": timings, "server_decode_request_general_orjson": general_ms,
              "rest_only_total_ms": total,
              "serving_bytes": {"request_bytes": len(binary), "steps_ms": bytes_steps,
                                "rest_only_total_ms": round(sum(bytes_steps.values()), 1)}}
    if args.grpc_p50_ms:
        result["grpc_p50_ms"] = args.grpc_p50_ms
        result["budget_for_1_5x_ms"] = round(0.5 * args.grpc_p50_ms, 1)
        result["floor_ratio_if_nothing_else"] = round(1 + total / args.grpc_p50_ms, 2)
    write_result("rest_json", result)


if __name__ == "__main__":
    main()
