"""`tailseg serve`: a TF Serving-compatible model server (REST + gRPC) for local use and tests.

Loads a TF Serving model base path (or the models listed in a models.config), serves TF
Serving's REST and gRPC APIs, picks up new version directories while running, binds to
127.0.0.1 unless told otherwise and limits request sizes. Readiness: GET /readyz, the model
status APIs, and one JSON line {"ready": true, ...} on stdout once every model has a version.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from tailseg.config import Strict
from tailseg.errors import ConfigError
from tailseg.serving.model_config import ModelSource

logger = logging.getLogger(__name__)


class ServeConfig(Strict):
    """Settings of one server process (TF Serving's flag names, in snake case)."""

    model_base_path: str | None = None
    model_name: str = Field("tailseg", pattern=r"^[A-Za-z0-9_.-]+$")
    model_config_file: str | None = None
    host: str = "127.0.0.1"
    rest_port: int = Field(8501, ge=0, le=65535, description="0 picks a free port.")
    grpc_port: int = Field(8500, ge=0, le=65535, description="0 picks a free port.")
    max_request_bytes: int = Field(64 * 2**20, ge=1024,
                                   description="Largest REST body or gRPC message accepted.")
    poll_seconds: float = Field(2.0, gt=0, description="Version and config polling period.")
    grpc_workers: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> ServeConfig:
        if (self.model_base_path is None) == (self.model_config_file is None):
            raise ValueError("give exactly one of model_base_path or model_config_file")
        return self


def build_registry(config: ServeConfig):
    """The registry with its first versions loaded. Paths are checked before TF is imported."""
    if config.model_config_file is not None:
        path = Path(config.model_config_file)
        if not path.is_file():
            raise ConfigError(f"{path}: model config file not found")
    elif not Path(config.model_base_path).is_dir():
        raise ConfigError(f"{config.model_base_path}: model base path not found (expected "
                          "<base>/<integer version>/saved_model.pb)")
    from tailseg.serving.registry import ModelRegistry

    if config.model_config_file is not None:
        registry = ModelRegistry([], Path(config.model_config_file))
    else:
        source = ModelSource(config.model_name, Path(config.model_base_path).resolve())
        registry = ModelRegistry([source])
    registry.refresh()
    return registry


@dataclass
class RunningServer:
    """Both servers and the version watcher; stop() shuts all of them down."""

    registry: object
    rest: object
    grpc: object
    rest_port: int
    grpc_port: int
    stopping: threading.Event

    def stop(self, grace: float = 2.0) -> None:
        self.stopping.set()
        self.rest.shutdown()
        self.rest.server_close()
        self.grpc.stop(grace).wait()


def start_server(config: ServeConfig) -> RunningServer:
    """Load the models, bind REST and gRPC, start serving and watching. Returns at once."""
    registry = build_registry(config)
    import grpc

    from tailseg.serving.grpc_api import add_servicers
    from tailseg.serving.rest import make_rest_server

    options = [("grpc.max_receive_message_length", config.max_request_bytes),
               ("grpc.max_send_message_length", -1)]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(config.grpc_workers), options=options)
    add_servicers(grpc_server, registry)
    grpc_port = grpc_server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    if grpc_port == 0:
        raise ConfigError(f"cannot bind gRPC to {config.host}:{config.grpc_port}")
    try:
        rest = make_rest_server(registry, config.host, config.rest_port, config.max_request_bytes)
    except OSError as error:
        grpc_server.stop(0)
        raise ConfigError(f"cannot bind REST to {config.host}:{config.rest_port}: {error}") \
            from error
    grpc_server.start()
    threading.Thread(target=rest.serve_forever, name="rest", daemon=True).start()
    stopping = threading.Event()
    registry.watch(config.poll_seconds, stopping)
    return RunningServer(registry, rest, grpc_server, rest.server_address[1], grpc_port, stopping)


def serve(config: ServeConfig) -> None:
    """Run until SIGTERM or SIGINT; print the ready line on stdout when models are loaded."""
    server = start_server(config)
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
