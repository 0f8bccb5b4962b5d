"""Command-line flags of `tailseg serve`: tensorflow_model_server's names, plus tailseg's own.

Every TF Serving flag here has its meaning in model_servers/main.cc, so one command line serves
both servers: `--port=8500 --rest_api_port=8501 --model_name=tailseg
--model_base_path=/models/tailseg`. As in TF Serving, `--port=0` / `--rest_api_port=0` disable
that API; tailseg's older `--grpc-port` / `--rest-port` (kept for tests and scripts) bind any
free port when 0. Only the standard library is imported, so building the CLI stays fast.
"""

from __future__ import annotations

import argparse

DEFAULT_GRPC_PORT, DEFAULT_REST_PORT = 8500, 8501


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_base_path", "--model-base-path", dest="model_base_path",
                        help="Directory with integer version folders")
    source.add_argument("--model_config_file", "--model-config-file", dest="model_config_file",
                        help="A models.config (ModelServerConfig text proto)")
    parser.add_argument("--model_config_list_root_dir", default=None,
                        help="Absolute folder that relative base paths in the models.config "
                             "resolve against (without it they are refused, as in TF Serving)")
    parser.add_argument("--model_name", "--model-name", dest="model_name", default="tailseg",
                        help="With --model_base_path (default: %(default)s; TF Serving's is "
                             "'default')")
    parser.add_argument("--port", type=int, default=None,
                        help=f"gRPC port; 0 disables gRPC (default: {DEFAULT_GRPC_PORT})")
    parser.add_argument("--rest_api_port", type=int, default=None,
                        help=f"REST port; 0 disables REST (default here: {DEFAULT_REST_PORT}; "
                             "TF Serving's default is 0)")
    parser.add_argument("--grpc-port", dest="grpc_free_port", type=int, default=None,
                        help="gRPC port, 0 picks a free one (tailseg)")
    parser.add_argument("--rest-port", dest="rest_free_port", type=int, default=None,
                        help="REST port, 0 picks a free one (tailseg)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Bind address (default: %(default)s; 0.0.0.0 exposes it)")
    parser.add_argument("--file_system_poll_wait_seconds", "--poll-seconds",
                        dest="poll_seconds", type=float, default=2.0,
                        help="Seconds between polls for new versions; 0 polls once "
                             "(default: %(default)s)")
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=None,
                        help="0: read models.config once; >0: re-read it when it changes "
                             "(default: re-read when it changes)")
    parser.add_argument("--max_num_load_retries", type=int, default=5,
                        help="Retries of a failed version load (default: %(default)s)")
    parser.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                        help="Microseconds between load retries (default: %(default)s)")
    parser.add_argument("--grpc_max_threads", type=int, default=None,
                        help="gRPC worker threads (default: 4 x CPUs, at least 16)")
    parser.add_argument("--rest_api_num_threads", type=int, default=None,
                        help="REST connections served at once, one thread each (default: 4 x "
                             "CPUs, at least 16)")
    parser.add_argument("--rest_api_timeout_in_ms", type=int, default=30_000,
                        help="REST socket read timeout and request deadline (default: "
                             "%(default)s)")
    parser.add_argument("--monitoring_config_file", default=None,
                        help="MonitoringConfig text proto enabling Prometheus metrics")
    parser.add_argument("--allow_version_labels_for_unavailable_models", type=_tf_bool,
                        nargs="?", const=True, default=False, metavar="true|false",
                        help="Let models.config assign labels new to the server to versions "
                             "not yet AVAILABLE (needed for labels at start-up; default: "
                             "%(default)s)")
    parser.add_argument("--enable_batching", type=_tf_bool, nargs="?", const=True,
                        default=False, metavar="true|false",
                        help="Merge concurrent predict requests of the same model version and "
                             "image shape into one model call (default: %(default)s)")
    parser.add_argument("--batching_parameters_file", default=None,
                        help="BatchingParameters text proto (max_batch_size, "
                             "batch_timeout_micros, max_enqueued_batches, num_batch_threads, "
                             "allowed_batch_sizes); needs --enable_batching (default: TF "
                             "Serving's defaults)")
    parser.add_argument("--max_request_bytes", "--max-request-bytes", dest="max_request_bytes",
                        type=int, default=64 * 2**20,
                        help="Largest REST body (default: %(default)s; tailseg)")
    parser.add_argument("--max_pixels_in_flight", type=int, default=12 * 2**20,
                        help="Image pixels predicted or queued at once (default: %(default)s; "
                             "tailseg)")
    parser.add_argument("--max_queued_requests", type=int, default=32,
                        help="Requests waiting for room before 429 / RESOURCE_EXHAUSTED "
                             "(default: %(default)s; tailseg)")


def _tf_bool(text: str) -> bool:
    """A boolean flag value as TensorFlow's flag parser reads it (true/false, 1/0)."""
    match text.lower():
        case "true" | "1":
            return True
        case "false" | "0":
            return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _port(tf_value: int | None, free_value: int | None, default: int) -> int | None:
    if tf_value is not None:
        return tf_value or None
    return default if free_value is None else free_value


def serve_config_kwargs(args: argparse.Namespace) -> dict:
    """ServeConfig keyword arguments from parsed flags (unset optional ones left out)."""
    kwargs = {
        "model_base_path": args.model_base_path, "model_config_file": args.model_config_file,
        "model_config_list_root_dir": args.model_config_list_root_dir,
        "model_name": args.model_name, "host": args.host,
        "grpc_port": _port(args.port, args.grpc_free_port, DEFAULT_GRPC_PORT),
        "rest_port": _port(args.rest_api_port, args.rest_free_port, DEFAULT_REST_PORT),
        "max_request_bytes": args.max_request_bytes, "poll_seconds": args.poll_seconds,
        "config_poll_seconds": args.model_config_file_poll_wait_seconds,
        "max_num_load_retries": args.max_num_load_retries,
        "load_retry_interval_seconds": max(args.load_retry_interval_micros, 0) / 1e6,
        "rest_timeout_seconds": args.rest_api_timeout_in_ms / 1000,
        "monitoring_config_file": args.monitoring_config_file,
        "max_pixels_in_flight": args.max_pixels_in_flight,
        "max_queued_requests": args.max_queued_requests,
        "grpc_max_threads": args.grpc_max_threads,
        "rest_max_connections": args.rest_api_num_threads,
        "allow_version_labels_for_unavailable_models":
            args.allow_version_labels_for_unavailable_models,
        "enable_batching": args.enable_batching,
        "batching_parameters_file": args.batching_parameters_file,
    }
    return {key: value for key, value in kwargs.items()
            if value is not None or key in ("model_base_path", "model_config_file",
                                            "grpc_port", "rest_port", "config_poll_seconds")}
