"""Server-side request batching (--enable_batching): TF Serving's flags and BatchingParameters
file, its scheduler's rules (merge within the timeout, bounded queue refused with UNAVAILABLE,
oversize tasks refused, deadlines), tailseg's rules (never merge different shapes, batches fit the
pixel budget) and exactness: each batched answer equals its unbatched prediction bit for bit.

The batcher is exercised with the real exported U-Net, directly and through real gRPC and REST
servers on loopback. Waits for partners are made deterministic with long batch timeouts and
batches that fill up, not with sleeps.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from pydantic import ValidationError
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tailseg.cli import build_parser
from tailseg.errors import ConfigError, ServingRequestError
from tailseg.export import OUTPUT_NAME
from tailseg.serving.batching import Batcher, BatchingParameters, read_batching_parameters
from tailseg.serving.flags import serve_config_kwargs
from tailseg.serving.protocol import from_tensor_proto
from tailseg.serving.server import ServeConfig, start_server
from tailseg.serving.version import load_version
from tailseg.serving.warmup import predict_request
from tests import test_serving_operations as operations

version_dir = operations.version_dir  # fixture: a complete version of a tiny exported U-Net
ROOT = Path(__file__).resolve().parents[1]
SLOW = 30_000_000  # a batch timeout no test waits for: batches run because they fill up


@pytest.fixture(scope="module")
def loaded(version_dir):
    return load_version("tailseg", version_dir)


def chips(count: int, side: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(.02, .3, (count, side, side, 3)).astype(np.float32)


class Calls:
    """The unbatched run, recording the batch size of every model call."""

    def __init__(self, loaded):
        self.loaded, self.sizes = loaded, []

    def __call__(self, loaded, images, deadline=None, alive=None):
        assert loaded is self.loaded
        self.sizes.append(len(images))
        return loaded.predict(images, deadline, alive)


@pytest.fixture
def batcher_of(loaded):
    """Batcher(params) around the real model; stopped after the test."""
    made = []

    def make(max_pixels: int | None = None, **params):
        calls = Calls(loaded)
        batcher = Batcher(BatchingParameters(**{"num_batch_threads": 1, **params}), calls,
                          max_pixels)
        made.append(batcher)
        return batcher, calls

    yield make
    for batcher in made:
        batcher.stop()


def in_threads(*calls) -> list:
    """Run the calls concurrently; their results (or exceptions) in order."""
    results = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as error:  # returned for the test to assert on
            results[i] = error

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def wait_enqueued(batcher: Batcher, count: int) -> None:
    operations.wait_for(lambda: batcher.enqueued() == count, 30, f"{count} queued requests")


# --- the batcher, with the real model ---------------------------------------------------------

def test_concurrent_requests_share_one_model_call_and_answers_are_bit_identical(
        batcher_of, loaded):
    batcher, calls = batcher_of(max_batch_size=4, batch_timeout_micros=SLOW)
    requests = [chips(1, seed=1), chips(2, seed=2), chips(1, seed=3)]  # 4 images: one batch
    answers = in_threads(*(lambda r=r: batcher.predict(loaded, r) for r in requests))
    assert calls.sizes == [4] and batcher.model_calls == 1
    for request, answer in zip(requests, answers[:len(requests)], strict=True):
        assert answer.shape == (len(request), 16, 16, 1)
        np.testing.assert_array_equal(answer, loaded.predict(request))  # exact, not close


def test_a_lone_request_waits_no_longer_than_the_batch_timeout(batcher_of, loaded):
    batcher, calls = batcher_of(max_batch_size=8, batch_timeout_micros=300_000)
    started = time.monotonic()
    answer = batcher.predict(loaded, chips(1), deadline=time.monotonic() + 20)
    waited = time.monotonic() - started
    assert 0.29 <= waited < 10, waited  # waited for partners, then ran alone
    assert calls.sizes == [1]
    np.testing.assert_array_equal(answer, loaded.predict(chips(1)))


def test_a_full_queue_refuses_with_unavailable_and_tf_servings_message(batcher_of, loaded):
    batcher, calls = batcher_of(max_batch_size=2, max_enqueued_batches=1,
                                batch_timeout_micros=SLOW)
    first = {}
    waiting = threading.Thread(target=lambda: first.update(out=batcher.predict(loaded, chips(1))))
    waiting.start()
    wait_enqueued(batcher, 1)
    # Two images do not fit the open batch, and the queue holds its one batch already.
    with pytest.raises(ServingRequestError, match="The batch scheduling queue to which this task "
                       "was submitted is full; currently 1 batches enqueued and "
                       "max_enqueued_batches is 1") as refused:
        batcher.predict(loaded, chips(2))
    assert refused.value.code == "UNAVAILABLE"
    second = batcher.predict(loaded, chips(1, seed=5))  # fits: fills the batch, which runs
    waiting.join(30)
    assert calls.sizes == [2]
    np.testing.assert_array_equal(first["out"], loaded.predict(chips(1)))
    np.testing.assert_array_equal(second, loaded.predict(chips(1, seed=5)))


def test_requests_of_different_shapes_are_never_merged(batcher_of, loaded):
    batcher, calls = batcher_of(max_batch_size=2, batch_timeout_micros=300_000)
    small, large = chips(1, 16), chips(1, 24)
    answers = in_threads(lambda: batcher.predict(loaded, small),
                         lambda: batcher.predict(loaded, large))
    assert sorted(calls.sizes) == [1, 1]
    np.testing.assert_array_equal(answers[0], loaded.predict(small))
    np.testing.assert_array_equal(answers[1], loaded.predict(large))


def test_more_images_than_max_batch_size_are_refused_as_tf_serving_does(batcher_of, loaded):
    batcher, calls = batcher_of(max_batch_size=2)
    with pytest.raises(ServingRequestError, match="Task size 3 is larger than maximum input "
                                                  "batch size 2") as refused:
        batcher.predict(loaded, chips(3))
    assert refused.value.code == "INVALID_ARGUMENT" and calls.sizes == []


def test_expired_and_cancelled_requests_are_dropped_from_their_batch_not_run(batcher_of, loaded):
    batcher, calls = batcher_of(max_batch_size=3, batch_timeout_micros=SLOW)
    with pytest.raises(ServingRequestError) as expired:
        batcher.predict(loaded, chips(1), deadline=time.monotonic() + 0.3)
    assert expired.value.code == "DEADLINE_EXCEEDED"
    client_there, gone = threading.Event(), []
    client_there.set()

    def cancelled_call():
        try:
            batcher.predict(loaded, chips(1), alive=client_there.is_set)
        except ServingRequestError as error:
            gone.append(error)

    thread = threading.Thread(target=cancelled_call)
    thread.start()
    wait_enqueued(batcher, 2)  # the expired one and the cancelled-to-be one wait in the batch
    client_there.clear()
    thread.join(30)
    assert [error.code for error in gone] == ["CANCELLED"]
    answer = batcher.predict(loaded, chips(1, seed=7))  # the third request fills the batch
    assert calls.sizes == [1]  # only the wanted request ran
    np.testing.assert_array_equal(answer, loaded.predict(chips(1, seed=7)))


@pytest.mark.parametrize("failure, code", [
    # What LoadedVersion.predict raises for a failed model call (an OpError's status) ...
    (ServingRequestError("ResourceExhaustedError: OOM when allocating tensor",
                         "RESOURCE_EXHAUSTED"), "RESOURCE_EXHAUSTED"),
    (RuntimeError("unexpected"), "INTERNAL"),  # ... and anything else
])
def test_a_model_error_goes_to_every_request_of_the_batch(batcher_of, loaded, failure, code):
    batcher, calls = batcher_of(max_batch_size=2, batch_timeout_micros=SLOW)
    real_run = calls.__call__

    def failing(*args):
        real_run(*args)
        raise failure

    batcher._run = failing
    errors = in_threads(lambda: batcher.predict(loaded, chips(1)),
                        lambda: batcher.predict(loaded, chips(1, seed=1)))
    assert calls.sizes == [2]
    assert [(type(e), e.code) for e in errors] == [(ServingRequestError, code)] * 2, errors
    assert str(failure) in str(errors[0]) and errors[0] is not errors[1]  # one per thread


def test_allowed_batch_sizes_pad_with_copies_and_drop_the_padding(batcher_of, loaded):
    batcher, calls = batcher_of(max_batch_size=4, allowed_batch_sizes=(2, 4),
                                batch_timeout_micros=0)
    answer = batcher.predict(loaded, chips(1))
    assert calls.sizes == [2]  # padded up to the next allowed size
    np.testing.assert_array_equal(answer, loaded.predict(chips(1)))


def test_batches_never_exceed_the_pixel_budget(batcher_of, loaded):
    # Room for two 16 x 16 chips: four requests run as two full batches, not one of four.
    batcher, calls = batcher_of(max_pixels=2 * 16 * 16, max_batch_size=4,
                                batch_timeout_micros=SLOW)
    requests = [chips(1, seed=s) for s in range(4)]
    answers = in_threads(*(lambda r=r: batcher.predict(loaded, r) for r in requests))
    assert calls.sizes == [2, 2]
    for request, answer in zip(requests, answers[:len(requests)], strict=True):
        np.testing.assert_array_equal(answer, loaded.predict(request))


# --- flags and the BatchingParameters file -------------------------------------------------------

def serve_args(*args: str) -> dict:
    return serve_config_kwargs(build_parser().parse_args(["serve", "--model_base_path=m", *args]))


def test_batching_is_off_by_default_and_takes_tf_servings_bool_spellings():
    assert serve_args()["enable_batching"] is False
    assert ServeConfig(model_base_path="m").enable_batching is False
    assert serve_args("--enable_batching")["enable_batching"] is True
    assert serve_args("--enable_batching=true")["enable_batching"] is True
    assert serve_args("--enable_batching=0")["enable_batching"] is False
    with pytest.raises(SystemExit):
        serve_args("--enable_batching=maybe")


def test_a_parameters_file_without_enable_batching_is_refused():
    with pytest.raises(ValidationError, match="batching_parameters_file is set without setting "
                                              "enable_batching to true"):
        ServeConfig(**serve_args("--batching_parameters_file=b.config"))


def test_the_production_batching_config_parses():
    params = read_batching_parameters(ROOT / "infra/k8s/base/config/batching.config")
    assert (params.max_batch_size, params.batch_timeout_micros, params.max_enqueued_batches,
            params.num_batch_threads) == (8, 5000, 100, 2)


def test_tf_servings_defaults_apply_to_fields_left_out(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_size { value: 4 }\n")
    params = read_batching_parameters(path)
    defaults = BatchingParameters()
    assert params.max_batch_size == 4
    assert (params.batch_timeout_micros, params.max_enqueued_batches) == (0, 10)
    assert params.num_batch_threads == defaults.num_batch_threads >= 1


@pytest.mark.parametrize("text, message", [
    ("max_batch_sise { value: 8 }", 'no field named "max_batch_sise"'),
    ("max_batch_size: 8", "max_batch_size"),  # a wrapper needs { value: ... }
    ("enable_large_batch_splitting { value: true }", "enable_large_batch_splitting"),
    ("pad_variable_length_inputs: true", "pad_variable_length_inputs: true is not supported"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4",
     r"final entry in allowed_batch_sizes \(4\) must equal max_batch_size \(8\)"),
    ("max_batch_size { value: 4 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 "
     "allowed_batch_sizes: 4", "monotonically increasing"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be positive"),
    ("max_batch_size { value: 0 }", "max_batch_size must be positive"),
])
def test_parameters_file_errors_name_the_file_and_the_field(tmp_path, text, message):
    path = tmp_path / "typo.config"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as error:
        read_batching_parameters(path)
    assert str(path) in str(error.value)


def test_a_server_with_a_bad_parameters_file_does_not_start(tmp_path, version_dir):
    path = tmp_path / "batching.config"
    path.write_text("max_batch_sise { value: 8 }\n")
    with pytest.raises(ConfigError, match=f"Invalid protobuf file: '{path}'"):
        start_server(ServeConfig(model_base_path=str(version_dir.parent), rest_port=0,
                                 grpc_port=0, poll_seconds=0, enable_batching=True,
                                 batching_parameters_file=str(path)))


# --- real servers on loopback -----------------------------------------------------------------

@pytest.fixture
def serving(tmp_path, version_dir):
    """start_server(...) with the given batching file text (None: batching off)."""
    servers = []
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{operations.METRICS_PATH}" }}')

    def start(batching: str | None):
        config = tmp_path / "batching.config"
        if batching is not None:
            config.write_text(batching)
        server = start_server(ServeConfig(
            model_base_path=str(version_dir.parent), rest_port=0, grpc_port=0, poll_seconds=0,
            monitoring_config_file=str(monitoring), enable_batching=batching is not None,
            batching_parameters_file=str(config) if batching is not None else None))
        server.rest_url = f"http://127.0.0.1:{server.rest_port}"
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def grpc_predict(server, images: np.ndarray) -> np.ndarray:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request(images, "tailseg"), timeout=30)
    return from_tensor_proto(response.outputs[OUTPUT_NAME])


def rest_predict(server, images: np.ndarray) -> tuple[int, dict]:
    body = json.dumps({"instances": images.tolist()}).encode()
    request = urllib.request.Request(f"{server.rest_url}/v1/models/tailseg:predict", body,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_grpc_and_rest_requests_are_merged_by_a_real_server(serving, loaded):
    server = serving(f"max_batch_size {{ value: 4 }} batch_timeout_micros {{ value: {SLOW} }}")
    requests = [chips(1, seed=s) for s in range(3)]
    rest_chip = chips(1, seed=9)
    answers = in_threads(*(lambda r=r: grpc_predict(server, r) for r in requests),
                         lambda: rest_predict(server, rest_chip))
    assert server.batcher.model_calls == 1
    for request, answer in zip(requests, answers[:len(requests)], strict=True):
        np.testing.assert_array_equal(answer, loaded.predict(request))  # gRPC bytes: exact
    status, body = answers[3]
    assert status == 200, body
    np.testing.assert_allclose(np.array(body["predictions"]), loaded.predict(rest_chip),
                               atol=1e-6)
    samples = operations.scrape(server.rest_url)
    assert operations.sample(
        samples, ":tensorflow:serving:batching_session:wrapped_run_count_total") == 1
    assert operations.sample(samples, ":tensorflow:serving:batching_session:processed_batch_size"
                             "_sum", model_name="tailseg") == 4


def test_a_real_server_answers_503_and_unavailable_when_the_queue_is_full(serving, loaded):
    server = serving(f"max_batch_size {{ value: 2 }} max_enqueued_batches {{ value: 1 }} "
                     f"batch_timeout_micros {{ value: {SLOW} }} num_batch_threads {{ value: 1 }}")
    waiting: list = []
    thread = threading.Thread(target=lambda: waiting.append(grpc_predict(server, chips(1))))
    thread.start()
    wait_enqueued(server.batcher, 1)
    status, body = rest_predict(server, chips(2))
    assert status == 503 and "batch scheduling queue" in body["error"], body
    with pytest.raises(grpc.RpcError) as refused:
        grpc_predict(server, chips(2))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "max_enqueued_batches is 1" in refused.value.details()
    np.testing.assert_array_equal(grpc_predict(server, chips(1, seed=4)),
                                  loaded.predict(chips(1, seed=4)))
    thread.join(30)
    np.testing.assert_array_equal(waiting[0], loaded.predict(chips(1)))
    samples = operations.scrape(server.rest_url)
    assert operations.sample(samples, "tailseg_serving_admission_rejected_total",
                             reason="batch_queue_full") == 2


def test_without_the_flag_a_server_runs_every_request_alone(serving, loaded):
    server = serving(None)
    assert server.batcher is None
    answers = in_threads(*(lambda s=s: grpc_predict(server, chips(1, seed=s)) for s in range(2)))
    for seed, answer in enumerate(answers):
        np.testing.assert_array_equal(answer, loaded.predict(chips(1, seed=seed)))
    samples = operations.scrape(server.rest_url)
    assert operations.sample(
        samples, ":tensorflow:serving:batching_session:wrapped_run_count_total") == 0
