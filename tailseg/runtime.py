"""Process set-up for the `tailseg` command: the environment TensorFlow reads when it loads, one
console log handler, and TensorFlow's start-up lines that are known to be harmless.

Nothing happens at import; `tailseg.cli.main` calls these before TensorFlow is imported (and
the installed entry point, `pipelines.cli`, before ZenML).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from tailseg.errors import TailsegError

Verbosity = Literal["quiet", "normal", "verbose"]

# TensorFlow's plain CPU allocator returns large tensors to the OS and faults them back in on
# every step. It is the default wherever TensorFlow's oneDNN operations are off, as on x86 CPUs
# without AVX512_VNNI (the AVX2-only AMD EPYC of issue 13: 3.6-3.8 s and about 470k minor page
# faults per step of the default U-Net, batch 8, 256 x 256, against 2.3 s and under 3k with the
# BFC allocator). benchmarks/bench_allocator.py: the same ratios with oneDNN turned off on an
# AVX-512 EPYC (0.68x ms per step, 446k -> 3.4k faults); with oneDNN on, no difference.
TENSORFLOW_ENV = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}

# Start-up lines TensorFlow writes straight to file descriptor 2 while it is imported, before
# its log level applies. Each says something true but expected; any other line is passed on.
HARMLESS_STARTUP_LINES = [
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are "
               r"written to STDERR$"),
    re.compile(r"^I0000 .* port\.cc:\d+\] oneDNN custom operations are on\."),
    re.compile(r"^I0000 .* cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"),
    re.compile(r"^I0000 .* cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the "
               r"appropriate compiler flags\.$"),
]

# Loggers whose INFO records are about the user's run; other libraries show warnings only.
OWN_LOGGERS = ("tailseg", "pipelines", "steps", "__main__")
# ZenML's INFO lines that mark the stages of a run (step started/finished, run finished).
ZENML_STAGE_LOGGERS = ("zenml.orchestrators.step_launcher", "zenml.orchestrators.local")
# Warnings ZenML prints for situations that are expected on a fresh clone.
EXPECTED_WARNINGS = [("zenml.zen_stores.base_zen_store",
                      "Setting the global active stack to default"),
                     # On a fresh font cache matplotlib may miss a font a figure names and use
                     # DejaVu Sans instead: a harmless look-up, not about the user's run.
                     ("matplotlib.font_manager", "findfont: Font family")]


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA kernel driver (a GPU TensorFlow could use)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def tensorflow_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (default: os.environ) with tailseg's TensorFlow settings where it has none.

    For subprocesses that run TensorFlow; values the user set are kept.
    """
    environ = os.environ if environ is None else environ
    return {**TENSORFLOW_ENV, **environ}


def cpu_subprocess_environment() -> dict[str, str]:
    """The environment of a TensorFlow helper process that must stay on the CPU (the server
    launched by tests and tools, infra validation, tf2onnx): os.environ with tailseg's settings,
    CUDA hidden and TensorFlow's C++ log at warnings."""
    return {**tensorflow_environment(), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def apply_tensorflow_environment() -> None:
    """Put tailseg's TensorFlow settings into os.environ, keeping any the user set.

    Call before TensorFlow is imported: it reads them once, when it loads. Without an NVIDIA
    driver TensorFlow's C++ log level goes to 3 (errors hidden), since its only error there is
    the failed CUDA probe `failed call to cuInit: ... UNKNOWN ERROR (303)`; TensorFlow's real
    errors still reach Python as exceptions. With a driver it is 2, so CUDA problems show.
    """
    defaults = dict(TENSORFLOW_ENV)
    defaults["TF_CPP_MIN_LOG_LEVEL"] = "2" if nvidia_driver_present() else "3"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def filtered_startup_lines(patterns: list[re.Pattern] = HARMLESS_STARTUP_LINES) -> Iterator[None]:
    """Hold back what is written to file descriptor 2 inside the block, then write back every
    line that matches none of `patterns` (C++ libraries write there, beneath Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not any(pattern.search(line.rstrip("\n")) for pattern in patterns)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (once per process) without its known-harmless start-up lines."""
    if "tensorflow" in sys.modules:
        return
    with filtered_startup_lines():
        import tensorflow  # noqa: F401


class _ConsoleStream(io.TextIOBase):
    """sys.stderr, written through its class's `write`. ZenML replaces the `write` of the
    sys.stderr object to copy console text into step logs; its own log handler already stores
    every record there, so writing through the replacement would store each line twice."""

    def write(self, text: str) -> int:
        stream = sys.stderr
        write = getattr(type(stream), "write", None)
        return write(stream, text) if write is not None else stream.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _ConsoleFilter(logging.Filter):
    """At normal verbosity: the run's own INFO lines and ZenML's stage lines, every warning
    except the expected ones above."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if record.levelno >= logging.WARNING:
            return not any(name == logger and record.getMessage().startswith(prefix)
                           for logger, prefix in EXPECTED_WARNINGS)
        return name.startswith(OWN_LOGGERS + ZENML_STAGE_LOGGERS)


class _ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS message`; the level is named from WARNING up, the logger when verbose."""

    def __init__(self, verbose: bool):
        super().__init__(datefmt="%H:%M:%S")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname} " if record.levelno >= logging.WARNING or self.verbose else ""
        origin = f"{record.name}: " if self.verbose else ""
        line = f"{self.formatTime(record, self.datefmt)} {level}{origin}{record.getMessage()}"
        error = record.exc_info[1] if record.exc_info else None
        # A tailseg error's message says what went wrong and how to fix it; its traceback is
        # for --verbose.
        if record.exc_info and (self.verbose or not isinstance(error, TailsegError)):
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class ConsoleHandler(logging.StreamHandler):
    """tailseg's one console handler, on stderr (stdout carries results, e.g. `run`'s JSON)."""

    def __init__(self, verbosity: Verbosity):
        super().__init__(_ConsoleStream())
        self.verbosity = verbosity
        self.setLevel({"quiet": logging.WARNING, "normal": logging.INFO,
                       "verbose": logging.DEBUG}[verbosity])
        self.setFormatter(_ConsoleFormatter(verbosity == "verbose"))
        if verbosity != "verbose":
            self.addFilter(_ConsoleFilter())


def configure_console(verbosity: Verbosity = "normal") -> ConsoleHandler:
    """Log to the console through one ConsoleHandler on the root logger (replacing an earlier
    one). The root logger's level stays INFO (DEBUG when verbose) whatever the console shows,
    so ZenML's step logs keep every INFO record."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, ConsoleHandler):
            root.removeHandler(handler)
    handler = ConsoleHandler(verbosity)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity == "verbose" else logging.INFO)
    logging.captureWarnings(True)  # Python warnings become records, shown by the same rules.
    return handler


def keep_one_console_handler() -> None:
    """After ZenML is imported: remove the console handler it adds to the root logger (which
    prints every record a second time, in colour, on stdout) and restore our root level. ZenML's
    handler that stores records in its step logs stays."""
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, ConsoleHandler)]
    if not ours:
        return
    for handler in root.handlers[:]:
        if type(handler).__name__ == "ZenMLConsoleHandler":
            root.removeHandler(handler)
    root.setLevel(logging.DEBUG if ours[0].verbosity == "verbose" else logging.INFO)
