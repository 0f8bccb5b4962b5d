"""Run `tailseg serve` as a child process (tests, benchmarks, local checks).

The child binds free loopback ports (port 0) and announces them on stdout in its ready line,
so callers never race for ports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tailseg.runtime import cpu_subprocess_environment


@dataclass
class ServerProcess:
    process: subprocess.Popen
    rest_port: int
    grpc_port: int
    log_path: Path

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL after timeout; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_server(serve_args: list[str], workdir: str | Path,
                  timeout: float = 120) -> ServerProcess:
    """Start `python -m tailseg.cli serve SERVE_ARGS --rest-port 0 --grpc-port 0` and wait.

    Raises:
        RuntimeError: the server exited or was not ready within timeout (with its log tail).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out_path, log_path = workdir / "serve.out", workdir / "serve.log"
    command = [sys.executable, "-m", "tailseg.cli", "serve", "--rest-port", "0",
               "--grpc-port", "0", *serve_args]
    env = cpu_subprocess_environment()
    with open(out_path, "w") as out, open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=out, stderr=log, env=env)
    server = ServerProcess(process, 0, 0, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Only whole lines: the server may be half-way through writing its ready line.
        for line in out_path.read_text().splitlines(keepends=True):
            if not (line.startswith("{") and line.endswith("\n")):
                continue
            ready = json.loads(line)
            if ready.get("ready"):
                server.rest_port, server.grpc_port = ready["rest_port"], ready["grpc_port"]
                return server
        if process.poll() is not None:
            raise RuntimeError(f"tailseg serve exited with {process.returncode}:\n"
                               f"{server.log_tail()}")
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"tailseg serve was not ready in {timeout:g} s:\n{server.log_tail()}")
