"""`tailseg serve`: a TF Serving-compatible model server (REST + gRPC) for local use and tests.

Loads a TF Serving model base path (or the models listed in a models.config), serves TF
Serving's REST and gRPC APIs, picks up new version directories while running (retrying failed
loads, never unloading the serving version for a broken one), binds to 127.0.0.1 unless told
otherwise, and bounds its resources: REST connections, timeouts and body sizes, image pixels in
flight with a bounded queue. Optional request batching (--enable_batching, off by default;
tailseg.serving.batching). Prometheus metrics when a monitoring config enables them.
Readiness: GET /readyz, the model status APIs, and one JSON line {"ready": true, ...} on stdout
once every model has a version.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from tailseg.config import Strict
from tailseg.errors import ConfigError
from tailseg.serving.model_config import ModelSource, is_absolute_uri

logger = logging.getLogger(__name__)


def _default_threads() -> int:
    return max(16, 4 * (os.cpu_count() or 1))  # TF Serving: 4 x CPUs for gRPC and REST


class ServeConfig(Strict):
    """Settings of one server process (TF Serving's flag names, in snake case, where it has one).

    A port of None disables that API (TF Serving's --port=0 / --rest_api_port=0); port 0 here
    binds any free port (tailseg's --grpc-port 0 / --rest-port 0, for tests).
    """

    model_base_path: str | None = None
    model_name: str = Field("tailseg", pattern=r"^[A-Za-z0-9_.-]+$")
    model_config_file: str | None = None
    model_config_list_root_dir: str | None = None
    host: str = "127.0.0.1"
    rest_port: int | None = Field(8501, ge=0, le=65535)
    grpc_port: int | None = Field(8500, ge=0, le=65535)
    max_request_bytes: int = Field(64 * 2**20, ge=1024, description="Largest REST body.")
    poll_seconds: float = Field(2.0, ge=0, description="Version polling period; 0 polls once.")
    config_poll_seconds: float | None = Field(
        None, ge=0, description="models.config polling period; None: poll_seconds; 0: once.")
    grpc_max_threads: int = Field(default_factory=_default_threads, ge=1)
    rest_max_connections: int = Field(default_factory=_default_threads, ge=1)
    rest_timeout_seconds: float = Field(30.0, gt=0, description="--rest_api_timeout_in_ms.")
    max_num_load_retries: int = Field(5, ge=0)
    load_retry_interval_seconds: float = Field(60.0, ge=0)
    max_pixels_in_flight: int = Field(12 * 2**20, ge=1)
    max_queued_requests: int = Field(32, ge=0)
    monitoring_config_file: str | None = None
    allow_version_labels_for_unavailable_models: bool = False
    enable_batching: bool = False
    batching_parameters_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ServeConfig:
        if (self.model_base_path is None) == (self.model_config_file is None):
            raise ValueError("give exactly one of model_base_path or model_config_file")
        if self.batching_parameters_file is not None and not self.enable_batching:
            # model_servers/server.cc refuses this combination the same way.
            raise ValueError("batching_parameters_file is set without setting enable_batching "
                             "to true")
        if self.model_config_list_root_dir is not None and \
                not is_absolute_uri(self.model_config_list_root_dir):
            # server_core.cc's words for the same refusal
            raise ValueError("Expected non-empty absolute path or URI; got "
                             f"model_config_list_root_dir={self.model_config_list_root_dir}")
        if self.rest_port is None and self.grpc_port is None:
            raise ValueError("both APIs are disabled; give a gRPC or a REST port")
        return self


def build_registry(config: ServeConfig, metrics=None):
    """The registry with its first versions loaded. Paths are checked before TF is imported."""
    if config.model_base_path is not None and not is_absolute_uri(config.model_base_path):
        # main.cc puts the flag into a one-model config, which ValidateModelConfigList checks
        raise ConfigError(f"Failed to start server. Error: Expected model {config.model_name} "
                          "to have an absolute path or URI; got base_path()="
                          f"{config.model_base_path}")
    if config.model_config_file is not None:
        path = Path(config.model_config_file)
        if not path.is_file():
            raise ConfigError(f"{path}: model config file not found")
    elif not Path(config.model_base_path).is_dir():
        raise ConfigError(f"{config.model_base_path}: model base path not found (expected "
                          "<base>/<integer version>/saved_model.pb)")
    from tailseg.serving.registry import ModelRegistry

    config_file = Path(config.model_config_file) if config.model_config_file else None
    sources = [] if config_file else [
        ModelSource(config.model_name, Path(config.model_base_path))]
    registry = ModelRegistry(sources, config_file, config.max_num_load_retries,
                             config.load_retry_interval_seconds,
                             poll_config=config.config_poll_seconds != 0,
                             allow_labels_for_unavailable=(
                                 config.allow_version_labels_for_unavailable_models),
                             config_root=config.model_config_list_root_dir)
    if metrics is not None:
        registry.on_load_attempt = lambda path, status: metrics.load_attempts.labels(
            path, status).inc()
    try:
        registry.refresh()
    except ConfigError as error:  # as tensorflow_model_server's main.cc reports it
        raise ConfigError(f"Failed to start server. Error: {error}") from error
    return registry


@dataclass
class RunningServer:
    """Both servers and the version watcher; stop() shuts all of them down."""

    registry: object
    rest: object | None
    grpc: object | None
    rest_port: int | None
    grpc_port: int | None
    stopping: threading.Event
    batcher: object | None = None  # tailseg.serving.batching.Batcher with --enable_batching

    def stop(self, grace: float = 2.0) -> None:
        self.stopping.set()
        if self.rest is not None:
            self.rest.shutdown()
            self.rest.server_close()
        if self.grpc is not None:
            self.grpc.stop(grace).wait()
        if self.batcher is not None:
            self.batcher.stop()


def start_server(config: ServeConfig) -> RunningServer:
    """Load the models, bind REST and gRPC, start serving and watching. Returns at once."""
    from tailseg.serving.metrics import ServingMetrics, read_monitoring_config

    monitoring = read_monitoring_config(config.monitoring_config_file) \
        if config.monitoring_config_file else None
    if monitoring is not None and monitoring.enable and config.rest_port is None:
        raise ConfigError("--monitoring_config_file enables Prometheus metrics, which are served "
                          "on the REST port: give --rest_api_port as well")
    batching = None
    if config.enable_batching:
        from tailseg.serving.batching import BatchingParameters, read_batching_parameters

        batching = read_batching_parameters(config.batching_parameters_file) \
            if config.batching_parameters_file else BatchingParameters()
    metrics = ServingMetrics()  # always counted; exposed only when monitoring is enabled
    registry = build_registry(config, metrics)
    # No port opens before every model's newest version is AVAILABLE, as in TF Serving; a
    # failed first load ends the start-up with its error.
    registry.wait_for_initial_load(config.poll_seconds)
    import grpc

    from tailseg.serving.grpc_api import GRPC_MAX_MESSAGE_BYTES, ServingRuntime, add_servicers
    from tailseg.serving.limits import Admission
    from tailseg.serving.rest import RestLimits, make_rest_server

    admission = Admission(config.max_pixels_in_flight, config.max_queued_requests,
                          lambda reason: metrics.rejected.labels(reason).inc())
    metrics.watch(registry, admission)
    runtime = ServingRuntime(registry, admission, metrics)
    grpc_server = grpc_port = rest = None
    if config.grpc_port is not None:
        options = [("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES)]
        # Calls beyond the threads and the queue are refused with RESOURCE_EXHAUSTED.
        grpc_server = grpc.server(
            futures.ThreadPoolExecutor(config.grpc_max_threads), options=options,
            maximum_concurrent_rpcs=config.grpc_max_threads + config.max_queued_requests)
        add_servicers(grpc_server, runtime)
        grpc_port = grpc_server.add_insecure_port(f"{config.host}:{config.grpc_port}")
        if grpc_port == 0:
            raise ConfigError(f"cannot bind gRPC to {config.host}:{config.grpc_port}")
    if config.rest_port is not None:
        limits = RestLimits(config.max_request_bytes, config.rest_timeout_seconds,
                            config.rest_max_connections,
                            monitoring.path if monitoring and monitoring.enable else None)
        try:
            rest = make_rest_server(runtime, config.host, config.rest_port, limits)
        except OSError as error:
            if grpc_server is not None:
                grpc_server.stop(0)
            raise ConfigError(f"cannot bind REST to {config.host}:{config.rest_port}: {error}") \
                from error
    if batching is not None:  # started once both ports are bound
        from tailseg.serving.batching import Batcher

        runtime.batcher = Batcher(
            batching, runtime.run_unbatched, config.max_pixels_in_flight,
            on_batch=lambda name, images, requests, waited: metrics.observe_batch(
                batching.thread_pool_name, name, images, waited),
            on_reject=lambda reason: metrics.rejected.labels(reason).inc())
    if grpc_server is not None:
        grpc_server.start()
    if rest is not None:
        threading.Thread(target=rest.serve_forever, name="rest", daemon=True).start()
    stopping = threading.Event()
    if config.poll_seconds > 0:  # TF Serving: 0 polls the file system once, at start-up
        registry.watch(config.poll_seconds, stopping)
    return RunningServer(registry, rest, grpc_server, rest and rest.server_address[1],
                         grpc_port, stopping, runtime.batcher)


def serve(config: ServeConfig) -> None:
    """Run until SIGTERM or SIGINT; print the ready line on stdout when models are loaded."""
    from tailseg.serving.limits import gc_pausing_enabled

    server = start_server(config)
    if gc_pausing_enabled():
        # Move everything loaded so far (TensorFlow, the models) out of the collector's sight:
        # later collections then scan only request objects. Only in the server's own process.
        gc.freeze()
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    logger.info("serving REST on %s:%s and gRPC on %s:%s", config.host, server.rest_port,
                config.host, server.grpc_port)
    announced = False
    while not done.wait(0.1):
        if not announced and server.registry.ready():
            print(json.dumps({"ready": True, "host": config.host, "rest_port": server.rest_port,
                              "grpc_port": server.grpc_port}), flush=True)
            announced = True
    server.stop()
