"""Serving benchmark: p50/p99 latency and throughput of 448 x 448 predictions in process, over
gRPC and over REST (JSON numbers to serving_default; "rest_bytes": base64 raw float32 to
serving_bytes) (several concurrent clients) against `tailseg serve` in the same run, plus
TF vs ONNX Runtime throughput on the same real chips, REST with and without the garbage
collector paused around JSON (a second server with TAILSEG_GC_PAUSE=0, client likewise), and
the server's peak memory under concurrent large requests bounded by the pixel budget, and
gRPC throughput with 4 concurrent clients against servers with request batching off and on
(--enable_batching with infra's batching.config), written under "batching".

Run: .venv/bin/python benchmarks/bench_serving.py [--requests 24] [--clients 1 4]
     [--only-batching] (the batching section alone, merged into an existing --out file)
Writes benchmarks/results/serving.json. The model is the "cpu" preset U-Net, untrained (the
weights do not change the cost), exported with export_for_serving (parity + infra checks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.common import cpu
from tailseg.backends import load_onnx, load_tf
from tailseg.config import MODEL_PRESETS
from tailseg.dataset import load_chip, require_pairs
from tailseg.model import build_unet
from tailseg.serving.client import GrpcClient, RestClient
from tailseg.serving.package import export_for_serving
from tailseg.serving.process import launch_server

METRICS_PATH = "/monitoring/prometheus/metrics"


def real_chips(data_dir: str, count: int) -> np.ndarray:
    chips = []
    for pair in require_pairs(data_dir):
        chip = load_chip(pair)
        if chip.image.shape[:2] == (448, 448):  # skips the truncated chip_023
            chips.append(chip.image)
        if len(chips) == count:
            break
    return np.stack(chips).astype(np.float32)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for process {pid}")


def bounded_load(server, side: int, clients: int, requests: int) -> dict:
    """`clients` threads each send `requests` side x side chips over gRPC at once."""
    image = np.random.default_rng(0).uniform(.02, .3, (1, side, side, 3)).astype(np.float32)
    before = peak_rss_mb(server.process.pid)
    outcomes: list[str] = []

    def worker() -> None:
        client = GrpcClient(server.grpc_target, timeout=600, retries=0)
        for _ in range(requests):
            try:
                client.predict(image)
                outcomes.append("OK")
            except Exception as error:  # RESOURCE_EXHAUSTED when the queue is full
                outcomes.append(getattr(error, "status", type(error).__name__))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"side": side, "clients": clients, "requests_per_client": requests,
            "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
            "wall_s": round(time.perf_counter() - start, 1),
            "server_peak_rss_mb_before": before,
            "server_peak_rss_mb_after": peak_rss_mb(server.process.pid)}


def measure(make_predict: Callable[[], Callable], chips: np.ndarray, requests: int,
            clients: int) -> dict:
    """`clients` threads, each with its own predict, share `requests` batch-1 requests."""
    latencies: list[float] = []
    lock, counter = threading.Lock(), iter(range(requests))
    predictors = [make_predict() for _ in range(clients)]
    for predict in predictors:  # connect and warm up outside the timing
        predict(chips[:1])

    def worker(predict: Callable) -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            start = time.perf_counter()
            predict(chips[index % len(chips)][None])
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(p,)) for p in predictors]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": requests,
            "p50_ms": round(1000 * float(np.median(latencies)), 1),
            "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1),
            "images_per_s": round(requests / wall, 2)}


def paired(predicts: dict[str, Callable], chips: np.ndarray, requests: int) -> dict:
    """Batch-1 latency with the paths interleaved request by request (rotating the order), so
    load from other processes hits every path alike; overhead = median of per-request ratios."""
    times: dict[str, list[float]] = {name: [] for name in predicts}
    names = list(predicts)
    for predict in predicts.values():
        predict(chips[:1])
    for index in range(requests):
        image = chips[index % len(chips)][None]
        for name in names[index % len(names):] + names[:index % len(names)]:
            start = time.perf_counter()
            predicts[name](image)
            times[name].append(time.perf_counter() - start)
    base = np.array(times["in_process_tf"])
    return {name: {"p50_ms": round(1000 * float(np.median(values)), 1),
                   "p99_ms": round(1000 * float(np.percentile(values, 99)), 1),
                   "overhead_vs_in_process": round(float(np.median(np.array(values) / base)) - 1,
                                                   3)}
            for name, values in times.items()}


BATCHING_CONFIG = Path(__file__).resolve().parents[1] / "infra/k8s/base/config/batching.config"


def batched_model_calls(rest_url: str) -> tuple[float, float]:
    """(batched model calls, images in them) from the server's Prometheus metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(rest_url + METRICS_PATH, timeout=30) as response:
        text = response.read().decode()
    values = {sample.name: sample.value for family in text_string_to_metric_families(text)
              for sample in family.samples}
    prefix = ":tensorflow:serving:batching_session:"
    return (values.get(prefix + "wrapped_run_count_total", 0.0),
            values.get(prefix + "processed_batch_size_sum", 0.0))


def batching(base: str, workdir: Path, chips: np.ndarray, requests: int,
             clients: int = 4) -> dict:
    """gRPC throughput and latency of `clients` concurrent batch-1 clients against a server
    with batching off and one with --enable_batching and the production batching.config, in
    the same run (off, on, off, on: each mode measured twice, the rows averaged in "summary")."""
    monitoring = workdir / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    common = ["--model-base-path", base, "--max-request-bytes", str(2**28),
              f"--monitoring_config_file={monitoring}"]
    modes = {"off": [], "on": ["--enable_batching=true",
                               f"--batching_parameters_file={BATCHING_CONFIG}"]}
    rows = []
    with launch_server(common + modes["off"], workdir / "batching-off") as off, \
            launch_server(common + modes["on"], workdir / "batching-on") as on:
        for _ in range(2):
            for mode, server in (("off", off), ("on", on)):
                calls_before, images_before = batched_model_calls(server.rest_url)
                row = {"batching": mode,
                       **measure(lambda s=server: GrpcClient(s.grpc_target).predict, chips,
                                 requests, clients)}
                calls, images = batched_model_calls(server.rest_url)
                if mode == "on":  # less measure()'s warm-up: one lone call per client
                    calls, images = calls - calls_before - clients, images - images_before - clients
                    row["batched_model_calls"] = int(calls)
                    row["mean_images_per_call"] = round(images / max(calls, 1), 2)
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {}
    for mode in modes:
        mine = [row for row in rows if row["batching"] == mode]
        summary[mode] = {key: round(float(np.mean([row[key] for row in mine])), 2)
                         for key in ("images_per_s", "p50_ms", "p99_ms")}
    summary["throughput_on_over_off"] = round(
        summary["on"]["images_per_s"] / summary["off"]["images_per_s"], 3)
    return {"clients": clients, "requests_per_run": requests, "path": "grpc",
            "batching_parameters": [line for line in BATCHING_CONFIG.read_text().splitlines()
                                    if line and not line.startswith("#")],
            "runs": rows, "summary": summary}


def general_json(predict: Callable) -> Callable:
    """predict with the client's fast JSON path off (TAILSEG_FAST_JSON=0 is read per call)."""
    def call(images: np.ndarray) -> np.ndarray:
        os.environ["TAILSEG_FAST_JSON"] = "0"
        try:
            return predict(images)
        finally:
            del os.environ["TAILSEG_FAST_JSON"]
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/tailings-br")
    parser.add_argument("--chips", type=int, default=6)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4],
                        help="Concurrent clients of the throughput runs")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--load-side", type=int, default=2300,
                        help="Chip side of the bounded-memory load (0 skips it)")
    parser.add_argument("--load-clients", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/serving.json")
    parser.add_argument("--batching-clients", type=int, default=4,
                        help="Concurrent gRPC clients of the batching off/on section")
    parser.add_argument("--only-batching", action="store_true",
                        help="Run only the batching section; its result replaces the "
                             "\"batching\" entry of --out (kept otherwise)")
    parser.add_argument("--only-interleaved", action="store_true",
                        help="Run only the batch-1 in-process/gRPC/REST interleaved latencies "
                             "and their REST/gRPC ratio (e.g. for --preset seed)")
    args = parser.parse_args()
    if args.only_batching:
        only_batching(args)
        return
    if args.only_interleaved:
        only_interleaved(args)
        return

    chips = real_chips(args.data, args.chips)
    model = build_unet(MODEL_PRESETS[args.preset], np.full(3, .1), np.full(3, .05))
    results: dict = {"date": date.today().isoformat(), "machine": platform.machine(),
                     "cpu": cpu(), "tensorflow_flags": "stock wheel (no XLA, oneDNN default)",
                     "preset": args.preset, "image": [448, 448, 3], "batch": 1}
    with tempfile.TemporaryDirectory() as workdir:
        multiple = MODEL_PRESETS[args.preset].multiple  # the signature pads to it (2300 -> 2304)
        export = export_for_serving(model, Path(workdir) / "exports", "tailseg", multiple,
                                    chips[:3])
        results["parity_max_abs_diff_3_chips"] = export["parity_max_abs_diff"]
        tf_predictor, onnx_predictor = load_tf(export["saved_model"]), load_onnx(export["onnx"])
        rows = []
        base = str(Path(export["saved_model"]).parent)
        # The "before" of the fast JSON path, interleaved with the rest: a second server and a
        # client that decode every body with the general orjson path (TAILSEG_FAST_JSON=0).
        os.environ["TAILSEG_FAST_JSON"] = "0"
        try:
            general_server = launch_server(["--model-base-path", base, "--max-request-bytes",
                                            str(2**28)], Path(workdir) / "server-general-json")
        finally:
            del os.environ["TAILSEG_FAST_JSON"]
        with general_server as general, \
                launch_server(["--model-base-path", base, "--max-request-bytes", str(2**28)],
                              Path(workdir) / "server") as server:
            makers = {"in_process_tf": lambda: tf_predictor,
                      "grpc": lambda: GrpcClient(server.grpc_target).predict,
                      "rest": lambda: RestClient(server.rest_url, binary=False).predict,
                      "rest_bytes": lambda: RestClient(server.rest_url, binary=True).predict}
            results["batch1_interleaved"] = paired(
                {**{name: make() for name, make in makers.items()},
                 "rest_general_json": general_json(RestClient(general.rest_url,
                                                                   binary=False).predict)},
                chips, args.requests)
            print(json.dumps(results["batch1_interleaved"]), flush=True)
            interleaved = results["batch1_interleaved"]
            results["rest_fast_json"] = {
                "rest_over_grpc_p50_fast_json": round(
                    interleaved["rest"]["p50_ms"] / interleaved["grpc"]["p50_ms"], 2),
                "rest_over_grpc_p50_general_json": round(
                    interleaved["rest_general_json"]["p50_ms"] / interleaved["grpc"]["p50_ms"], 2),
                "rest_bytes_over_grpc_p50": round(
                    interleaved["rest_bytes"]["p50_ms"] / interleaved["grpc"]["p50_ms"], 2)}
            print(json.dumps(results["rest_fast_json"]), flush=True)
            general.stop()
            for clients in args.clients:
                for name, make in makers.items():
                    row = {"path": name, **measure(make, chips, args.requests, clients)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            if args.load_side:
                results["bounded_load"] = {
                    "max_pixels_in_flight": 12 * 2**20,
                    **bounded_load(server, args.load_side, args.load_clients, 2)}
                print(json.dumps(results["bounded_load"]), flush=True)
        # The "before": the same measurement with the collector left running, both sides.
        os.environ["TAILSEG_GC_PAUSE"] = "0"
        try:
            with launch_server(["--model-base-path", base, "--max-request-bytes", str(2**28)],
                               Path(workdir) / "server-gc") as server:
                unpaused = paired({"in_process_tf": tf_predictor,
                                   "grpc": GrpcClient(server.grpc_target).predict,
                                   "rest": RestClient(server.rest_url, binary=False).predict},
                                  chips, args.requests)
        finally:
            del os.environ["TAILSEG_GC_PAUSE"]
        paused = results["batch1_interleaved"]
        results["rest_gc_pause"] = {
            "gc_running": unpaused, "gc_paused": paused,
            "rest_p50_ratio_paused_over_running": round(
                paused["rest"]["p50_ms"] / unpaused["rest"]["p50_ms"], 3),
            "rest_over_grpc_p50_paused": round(
                paused["rest"]["p50_ms"] / paused["grpc"]["p50_ms"], 2),
            "rest_over_grpc_p50_running": round(
                unpaused["rest"]["p50_ms"] / unpaused["grpc"]["p50_ms"], 2)}
        print(json.dumps(results["rest_gc_pause"]), flush=True)
        # The in-process runs happened while the idle server shared the CPU too.
        results["latency"] = rows
        results["grpc_overhead_batch1"] = \
            results["batch1_interleaved"]["grpc"]["overhead_vs_in_process"]
        results["batching"] = batching(base, Path(workdir), chips, args.requests,
                                       args.batching_clients)
        print(json.dumps(results["batching"]["summary"]), flush=True)
        results["tf_vs_onnx"] = [
            {"runtime": name, **measure(lambda p=predictor: p, chips, args.requests, 1)}
            for name, predictor in (("tensorflow", tf_predictor), ("onnxruntime",
                                                                     onnx_predictor))]
    print(json.dumps(results, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def only_batching(args) -> None:
    """The batching section alone, merged into an existing results file."""
    chips = real_chips(args.data, args.chips)
    model = build_unet(MODEL_PRESETS[args.preset], np.full(3, .1), np.full(3, .05))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory() as workdir:
        export = export_for_serving(model, Path(workdir) / "exports", "tailseg",
                                    MODEL_PRESETS[args.preset].multiple, chips[:3])
        base = str(Path(export["saved_model"]).parent)
        results["batching"] = {"date": date.today().isoformat(), "cpu": cpu(),
                               "preset": args.preset,
                               **batching(base, Path(workdir), chips, args.requests,
                                          args.batching_clients)}
    print(json.dumps(results["batching"], indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


def only_interleaved(args) -> None:
    """Batch-1 latency of in-process, gRPC and REST requests, interleaved, written to --out."""
    chips = real_chips(args.data, args.chips)
    model = build_unet(MODEL_PRESETS[args.preset], np.full(3, .1), np.full(3, .05))
    results: dict = {"date": date.today().isoformat(), "cpu": cpu(), "preset": args.preset,
                     "image": [448, 448, 3], "batch": 1}
    with tempfile.TemporaryDirectory() as workdir:
        export = export_for_serving(model, Path(workdir) / "exports", "tailseg",
                                    MODEL_PRESETS[args.preset].multiple, chips[:3])
        base = str(Path(export["saved_model"]).parent)
        with launch_server(["--model-base-path", base, "--max-request-bytes", str(2**28)],
                           Path(workdir) / "server") as server:
            interleaved = paired({"in_process_tf": load_tf(export["saved_model"]),
                                  "grpc": GrpcClient(server.grpc_target).predict,
                                  "rest": RestClient(server.rest_url, binary=False).predict,
                                  "rest_bytes": RestClient(server.rest_url, binary=True).predict},
                                 chips, args.requests)
    results["batch1_interleaved"] = interleaved
    for path in ("rest", "rest_bytes"):
        results[f"{path}_over_grpc_p50"] = round(interleaved[path]["p50_ms"]
                                                 / interleaved["grpc"]["p50_ms"], 2)
    print(json.dumps(results, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
