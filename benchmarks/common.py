"""Shared benchmark helpers: the CPU's float32 FLOP limit, medians, JSON results."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TENSORFLOW_ENV_KEYS = ("TF_CPU_ALLOCATOR_USE_BFC", "TF_ENABLE_ONEDNN_OPTS")
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "fma", "amx_tile")


def cpu() -> dict:
    """The CPU model and the vector-instruction flags that decide TensorFlow's kernels."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    field = {line.split(":")[0].strip(): line.split(":", 1)[1].strip()
             for line in text.splitlines() if ":" in line}
    flags = set(field.get("flags", "").split())
    return {"model": field.get("model name", platform.processor() or "unknown"),
            "cores": os.cpu_count(), "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of a float32 matrix product (NumPy/BLAS), the machine's practical peak."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times) / 1e9


def machine() -> dict:
    """Where a result was measured: the CPU model and flags, and the TensorFlow settings
    (allocator, oneDNN) this process runs with, since both change the numbers."""
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "cpu": cpu(),
            "python": platform.python_version(),
            "tensorflow_env": {key: os.environ.get(key) for key in TENSORFLOW_ENV_KEYS}}


def minor_faults() -> int:
    """Minor page faults of this process so far (the allocator's cost shows here)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def result_path(name: str) -> Path:
    """benchmarks/results/<name>.json for a bare name; a name ending in .json is a path."""
    return Path(name) if name.endswith(".json") else RESULTS / f"{name}.json"


def write_result(name: str, payload: dict) -> Path:
    """Write benchmarks/results/<name>.json (or the path name, see result_path) with the date
    and machine. The JSON is printed first, so a failed write loses no measurement."""
    path = result_path(name)
    payload = {"benchmark": path.stem, "date": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    print(json.dumps(payload, indent=2), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
