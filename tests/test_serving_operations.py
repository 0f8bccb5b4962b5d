"""`tailseg serve` under operations, against real server processes on loopback: reloads that
fail and are retried, TF Serving's command-line flags, Prometheus metrics, stalled and oversize
connections, admission control and gRPC deadlines.

Each rule below is TF Serving's (model_servers/main.cc flags, AvailabilityPreservingPolicy,
LoaderHarness retries, http_server.cc status mapping) unless marked as a tailseg limit."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import get_model_status_pb2, prediction_service_pb2_grpc

from tailseg.cli import build_parser
from tailseg.config import ModelConfig
from tailseg.errors import ConfigError
from tailseg.export import write_saved_model
from tailseg.model import build_unet
from tailseg.serving.client import GrpcClient
from tailseg.serving.flags import serve_config_kwargs
from tailseg.serving.metrics import read_monitoring_config
from tailseg.serving.process import launch_server
from tailseg.serving.server import ServeConfig, start_server
from tailseg.serving.warmup import predict_request, write_warmup_file

METRICS_PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory) -> Path:
    """A complete, warm-up-carrying version of a tiny U-Net, to copy into base paths."""
    model = build_unet(ModelConfig(base_filters=2, depth=2, dropout=0), np.full(3, .1),
                       np.full(3, .05))
    version = tmp_path_factory.mktemp("export") / "1"
    write_saved_model(model, version, 4)
    write_warmup_file(version, np.full((1, 16, 16, 3), .1, np.float32), "tailseg")
    return version


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def scrape(rest_url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of the metrics endpoint, parsed: {(name, sorted labels): value}."""
    with urllib.request.urlopen(rest_url + METRICS_PATH, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def tf_style_server(version_dir, tmp_path_factory):
    """Started with tensorflow_model_server's own flags (fixed free ports, as a container
    would), Prometheus monitoring, and quick load retries."""
    base = tmp_path_factory.mktemp("models") / "tailseg"
    shutil.copytree(version_dir, base / "1")
    monitoring = base.parent / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{\n  enable: true\n  path: "{METRICS_PATH}"\n}}\n')
    grpc_port, rest_port = free_port(), free_port()
    args = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--model_name=tailseg",
            f"--model_base_path={base}", "--file_system_poll_wait_seconds=0.2",
            "--max_num_load_retries=5", "--load_retry_interval_micros=300000",
            f"--monitoring_config_file={monitoring}", "--grpc_max_threads=4",
            "--rest_api_timeout_in_ms=20000"]
    with launch_server(args, tmp_path_factory.mktemp("server")) as server:
        assert (server.grpc_port, server.rest_port) == (grpc_port, rest_port)
        server.base = base
        yield server


def states(server) -> dict[str, tuple[str, str]]:
    body = get_json(f"{server.rest_url}/v1/models/tailseg")
    return {s["version"]: (s["state"], s["status"]["error_code"])
            for s in body["model_version_status"]}


def test_half_copied_version_keeps_the_old_one_serving_and_loads_once_complete(
        tf_style_server, version_dir):
    server, images = tf_style_server, np.full((1, 24, 24, 3), .1, np.float32)
    client = GrpcClient(server.grpc_target, "tailseg", timeout=30, retries=0)
    reference = client.predict(images)
    partial = server.base / "2"
    partial.mkdir()
    shutil.copy(version_dir / "saved_model.pb", partial)  # variables/ not copied yet
    path_labels = {"model_path": str(partial)}
    wait_for(lambda: sample(scrape(server.rest_url), ":tensorflow:cc:saved_model:"
                            "load_attempt_count_total", status="fail", **path_labels) >= 2,
             what="two failed load attempts of the half-copied version")
    # Still retrying (LOADING), and version 1 answers every request meanwhile.
    assert states(server) == {"2": ("LOADING", "OK"), "1": ("AVAILABLE", "OK")}
    np.testing.assert_array_equal(client.predict(images), reference)
    assert GrpcClient(server.grpc_target).status().model_version_status[-1].version == 1

    for item in version_dir.iterdir():  # the copy completes
        if item.name != "saved_model.pb":
            (shutil.copytree if item.is_dir() else shutil.copy)(item, partial / item.name)
    wait_for(lambda: states(server) == {"2": ("AVAILABLE", "OK"), "1": ("END", "OK")},
             what="version 2 AVAILABLE and version 1 unloaded")
    assert sample(scrape(server.rest_url), ":tensorflow:cc:saved_model:load_attempt_count_total",
                  status="success", **path_labels) == 1
    np.testing.assert_array_equal(client.predict(images), reference)


def test_corrupt_version_is_retried_then_reported_and_never_unloads_the_serving_one(
        tf_style_server):
    server = tf_style_server
    corrupt = server.base / "3"
    corrupt.mkdir()
    (corrupt / "saved_model.pb").write_bytes(b"\x08\x01 not a SavedModel \xff\xff")
    wait_for(lambda: states(server).get("3", ("",))[0] == "END", what="version 3 END")
    status = get_json(f"{server.rest_url}/v1/models/tailseg/versions/3")
    entry = status["model_version_status"][0]
    assert entry["state"] == "END" and entry["status"]["error_code"] == "DATA_LOSS"
    assert "DecodeError" in entry["status"]["error_message"]
    # 1 attempt + --max_num_load_retries=5, then no more.
    failed = sample(scrape(server.rest_url), ":tensorflow:cc:saved_model:load_attempt_count_total",
                    status="fail", model_path=str(corrupt))
    assert failed == 6
    time.sleep(1)
    assert sample(scrape(server.rest_url), ":tensorflow:cc:saved_model:load_attempt_count_total",
                  status="fail", model_path=str(corrupt)) == 6
    # gRPC GetModelStatus reports the same, and the latest good version keeps serving.
    response = GrpcClient(server.grpc_target).status()
    by_version = {s.version: s for s in response.model_version_status}
    assert by_version[3].state == get_model_status_pb2.ModelVersionStatus.END
    assert by_version[3].status.error_code == grpc.StatusCode.DATA_LOSS.value[0]
    assert by_version[2].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    prediction = GrpcClient(server.grpc_target).predict(np.full((1, 8, 8, 3), .1, np.float32))
    assert prediction.shape == (1, 8, 8, 1)
    shutil.rmtree(corrupt)


def test_metrics_count_requests_latency_and_model_states(tf_style_server):
    server = tf_style_server
    before = scrape(server.rest_url)
    client = GrpcClient(server.grpc_target, "tailseg", retries=0)
    client.predict(np.full((1, 8, 8, 3), .1, np.float32))
    with pytest.raises(Exception, match="non-finite"):
        client.predict(np.full((1, 8, 8, 3), np.nan, np.float32))
    get_json(f"{server.rest_url}/v1/models/tailseg?debug=1")  # query strings are ignored
    after = scrape(server.rest_url)
    count = ":tensorflow:serving:request_count_total"
    assert sample(after, count, model_name="tailseg", status="OK") - \
        sample(before, count, model_name="tailseg", status="OK") == 2
    assert sample(after, count, model_name="tailseg", status="INVALID_ARGUMENT") - \
        sample(before, count, model_name="tailseg", status="INVALID_ARGUMENT") == 1
    latency = ":tensorflow:serving:request_latency_count"
    assert sample(after, latency, model_name="tailseg", API="grpc", entrypoint="Predict") - \
        sample(before, latency, model_name="tailseg", API="grpc", entrypoint="Predict") == 2
    assert sample(after, "tailseg_serving_model_version_state", model_name="tailseg",
                  version="2", state="AVAILABLE") == 1


def test_tf_serving_flag_semantics(version_dir, tmp_path):
    """TF Serving's flags parse to its meanings: --port=0 / --rest_api_port=0 disable an API,
    microseconds and milliseconds are converted; a misspelt monitoring config is refused."""
    base = tmp_path / "tailseg"
    shutil.copytree(version_dir, base / "1")
    args = build_parser().parse_args([
        "serve", "--model_name=tailseg", f"--model_base_path={base}", "--rest_api_port=0",
        "--port=8500", "--load_retry_interval_micros=250000", "--rest_api_timeout_in_ms=1500",
        "--grpc_max_threads=3", "--rest_api_num_threads=5"])
    config = ServeConfig(**serve_config_kwargs(args))
    assert (config.rest_port, config.grpc_port) == (None, 8500)
    assert (config.load_retry_interval_seconds, config.rest_timeout_seconds) == (0.25, 1.5)
    assert (config.grpc_max_threads, config.rest_max_connections) == (3, 5)
    legacy = build_parser().parse_args(["serve", "--model-base-path", str(base), "--rest-port",
                                        "0", "--grpc-port", "0"])
    assert ServeConfig(**serve_config_kwargs(legacy)).rest_port == 0  # 0: any free port
    server = start_server(config.model_copy(update={"grpc_port": 0}))
    try:  # REST really is off, gRPC answers
        assert server.rest is None and server.rest_port is None
        assert GrpcClient(f"127.0.0.1:{server.grpc_port}").status().model_version_status
    finally:
        server.stop()
    bad = tmp_path / "monitoring.config"
    bad.write_text("prometheus_config { enabled: true }")
    with pytest.raises(ConfigError, match="MonitoringConfig text proto"):
        read_monitoring_config(bad)
    with pytest.raises(ConfigError, match="give --rest_api_port"):
        bad.write_text("prometheus_config { enable: true }")
        start_server(config.model_copy(update={"monitoring_config_file": str(bad)}))


@pytest.fixture(scope="module")
def limited_server(version_dir, tmp_path_factory):
    """Small limits: 1 s REST timeout, 4 connections, a 1400 x 1400 pixel budget, 1 queued."""
    base = tmp_path_factory.mktemp("limited") / "tailseg"
    shutil.copytree(version_dir, base / "1")
    args = ["--model-base-path", str(base), "--rest_api_timeout_in_ms=1000",
            "--rest_api_num_threads=4", f"--max_pixels_in_flight={1400 * 1400}",
            "--max_queued_requests=1", "--max-request-bytes=100000"]
    monitoring = base.parent / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    args.append(f"--monitoring_config_file={monitoring}")
    with launch_server(args, tmp_path_factory.mktemp("server")) as server:
        yield server


def raw_request(port: int, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send bytes, read until the server closes; (answer, seconds until closed)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


def test_stalled_connections_are_capped_and_closed_after_the_timeout(limited_server):
    port, stalled = limited_server.rest_port, []
    for _ in range(4):  # each sends half a request and stops
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(b"POST /v1/models/tailseg:predict HTTP/1.1\r\nContent-Length: 50"
                           b"\r\n\r\n{\"inputs\"")
        stalled.append(connection)
    time.sleep(0.3)
    # A fifth connection is over the cap: answered 503 at once, in JSON.
    answer, _ = raw_request(port, b"GET /v1/models/tailseg HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503") and b"server busy" in answer
    started = time.monotonic()
    for connection in stalled:  # closed by the server after the 1 s timeout
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer
        connection.close()
    assert time.monotonic() - started < 5
    assert get_json(f"{limited_server.rest_url}/v1/models/tailseg")["model_version_status"]


def test_oversize_body_is_refused_from_its_declared_length_without_reading_it(limited_server):
    request = (b"POST /v1/models/tailseg:predict HTTP/1.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 10000000000\r\n\r\n{\"inputs\": [")
    answer, seconds = raw_request(limited_server.rest_port, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"Connection: close" in head
    assert "10000000000 bytes exceeds the limit" in json.loads(body)["error"]
    assert seconds < 4  # the answer did not wait for 10 GB (only a bounded drain)


def large_message_stub(server):
    """A PredictionService stub whose messages may hold 1400 x 1400 chips (gRPC's default
    limit is 4 MiB)."""
    return prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(server.grpc_target,
                              options=[("grpc.max_send_message_length", 2**30),
                                       ("grpc.max_receive_message_length", 2**30)]))


def test_requests_beyond_the_pixel_budget_are_refused_not_queued(limited_server):
    stub = large_message_stub(limited_server)
    big = predict_request(np.full((1, 1400, 1400, 3), .1, np.float32), "tailseg")
    codes, refusals, lock = [], [], threading.Lock()

    def call():
        try:
            stub.Predict(big, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            refusals.append(error.details())
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One runs, one waits in the queue of 1, the others are refused at once.
    assert codes.count(grpc.StatusCode.OK) >= 2, codes
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all("server busy" in details for details in refusals), refusals
    # A single request larger than the whole budget is refused at once.
    huge = predict_request(np.full((1, 1401, 1400, 3), .1, np.float32), "tailseg")
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(huge, timeout=60)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the server's budget" in raised.value.details()
    rejected = scrape(limited_server.rest_url)
    assert sample(rejected, "tailseg_serving_admission_rejected_total", reason="queue_full") >= 1
    assert sample(rejected, "tailseg_serving_admission_rejected_total", reason="too_large") == 1


# Timing-dependent: the small request must still be waiting when its deadline passes or it is
# cancelled, which needs the large request to outlast a few scrapes. Slow-marked so a fast CPU
# cannot turn a default run red; run it with `make test-slow`.
@pytest.mark.slow
def test_grpc_deadline_and_cancellation_stop_queued_work(limited_server):
    stub = large_message_stub(limited_server)
    big = predict_request(np.full((1, 1400, 1400, 3), .1, np.float32), "tailseg")
    count = ":tensorflow:serving:request_count_total"
    before = scrape(limited_server.rest_url)
    small = predict_request(np.full((1, 8, 8, 3), .1, np.float32), "tailseg")
    for ending in ("deadline", "cancel"):
        running = stub.Predict.future(big, timeout=60)  # holds the whole pixel budget
        wait_for(lambda: sample(scrape(limited_server.rest_url),
                                "tailseg_serving_pixels_in_flight") == 1400 * 1400,
                 what="the large request to be admitted")
        if ending == "deadline":
            # A deadline far shorter than the large request's run (the server treats the last
            # 50 ms as expired), so the small one is still waiting when it passes, on any CPU.
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(small, timeout=0.06)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            waiting = stub.Predict.future(small, timeout=60)
            # Cancel as soon as the server has queued it, while the large one still runs.
            polls = 0
            while sample(scrape(limited_server.rest_url), "tailseg_serving_queued_requests") != 1:
                polls += 1
                assert polls < 2000 and not waiting.done(), "the small request was never queued"
                time.sleep(0.002)
            waiting.cancel()
        running.result()
    # The server gave both up while they waited instead of running them after the client left.
    after = wait_for(lambda: (s := scrape(limited_server.rest_url)) and sample(
        s, count, model_name="tailseg", status="CANCELLED") > sample(
        before, count, model_name="tailseg", status="CANCELLED") and s,
        what="the cancelled request to be recorded")
    for status in ("DEADLINE_EXCEEDED", "CANCELLED"):
        assert sample(after, count, model_name="tailseg", status=status) - \
            sample(before, count, model_name="tailseg", status=status) == 1, status
    assert sample(after, count, model_name="tailseg", status="OK") - \
        sample(before, count, model_name="tailseg", status="OK") == 2


# Timing-dependent as the gRPC test above (the small request must still wait when its client
# leaves); slow-marked for the same reason.
@pytest.mark.slow
def test_a_rest_client_that_disconnects_cancels_its_queued_request(limited_server):
    stub = large_message_stub(limited_server)
    count = ":tensorflow:serving:request_count_total"
    before = scrape(limited_server.rest_url)
    running = stub.Predict.future(
        predict_request(np.full((1, 1400, 1400, 3), .1, np.float32), "tailseg"), timeout=60)
    wait_for(lambda: sample(scrape(limited_server.rest_url),
                            "tailseg_serving_pixels_in_flight") == 1400 * 1400,
             what="the large request to be admitted")
    body = json.dumps({"inputs": np.full((1, 8, 8, 3), .1).tolist()}).encode()
    host, port = limited_server.rest_url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    client.sendall(b"POST /v1/models/tailseg:predict HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)
    wait_for(lambda: sample(scrape(limited_server.rest_url),
                            "tailseg_serving_queued_requests") == 1,
             what="the REST request to be queued")
    client.close()  # the client gives up while its request waits for the pixel budget
    running.result()
    after = wait_for(lambda: (s := scrape(limited_server.rest_url)) and sample(
        s, count, model_name="tailseg", status="CANCELLED") > sample(
        before, count, model_name="tailseg", status="CANCELLED") and s,
        what="the abandoned REST request to be recorded as cancelled")
    assert sample(after, count, model_name="tailseg", status="OK") - \
        sample(before, count, model_name="tailseg", status="OK") == 1  # only the large one ran


def test_a_closed_connections_slot_is_free_before_the_client_sees_the_close():
    # One connection allowed, 300 requests one after another, each connecting as soon as the
    # last was closed: none may be refused as busy. (Freeing the slot after closing the socket
    # refused about a quarter of them.)
    from http.server import BaseHTTPRequestHandler

    from tailseg.serving.rest import BoundedHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (the base class's name)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format, *args):  # noqa: A002
            pass

    server = BoundedHTTPServer(("127.0.0.1", 0), Handler, max_connections=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answers = [raw_request(server.server_address[1],
                               b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")[0]
                   for _ in range(300)]
    finally:
        server.shutdown()
        server.server_close()
    assert sum(not answer.startswith(b"HTTP/1.1 200") for answer in answers) == 0


def test_no_port_opens_before_the_first_version_is_available(version_dir, tmp_path):
    # server.cc starts the gRPC and HTTP servers only after ServerCore::Create, which waits
    # (ConnectSourcesWithFastInitialLoad) for the newest version of every model: with none on
    # disk it keeps polling, so a Kubernetes probe sees no port (docs/kubernetes.md).
    base = tmp_path / "tailseg"
    base.mkdir()
    started = []
    thread = threading.Thread(target=lambda: started.append(start_server(ServeConfig(
        model_base_path=str(base), rest_port=0, grpc_port=0, poll_seconds=0.2))), daemon=True)
    thread.start()
    thread.join(2.0)
    assert thread.is_alive() and not started, "the server started with no version"
    shutil.copytree(version_dir, base / "1")
    thread.join(60)
    (server,) = started
    try:
        status = get_json(f"http://127.0.0.1:{server.rest_port}/v1/models/tailseg")
        assert [v["state"] for v in status["model_version_status"]] == ["AVAILABLE"]
    finally:
        server.stop()


def test_a_first_version_that_fails_to_load_ends_the_start_up(version_dir, tmp_path):
    # load_servables_fast.cc: "Some models did not become available" once the newest version
    # is END; main.cc then exits ("Failed to start server"). An older good version does not
    # save the start: the newest is the one waited for.
    base = tmp_path / "tailseg"
    shutil.copytree(version_dir, base / "1")
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"\x08\x01 not a SavedModel \xff\xff")
    with pytest.raises(ConfigError, match=r"Failed to start server. Error: Some models did not "
                                          r"become available: \{tailseg version 2: .*Decode"):
        start_server(ServeConfig(model_base_path=str(base), rest_port=0, grpc_port=0,
                                 poll_seconds=0.2, max_num_load_retries=1,
                                 load_retry_interval_seconds=0.1))
    with pytest.raises(RuntimeError, match="exited with 2"):
        launch_server([f"--model_base_path={base}", "--max_num_load_retries=0"],
                      tmp_path / "cli", timeout=90)
