"""Prometheus metrics of `tailseg serve`, under TF Serving's names where TF Serving has one.

Enabled as in TF Serving: `--monitoring_config_file` holding a MonitoringConfig text proto
`prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }`, served on the REST
port. The MonitoringConfig proto is not in the tensorflow-serving-api wheel, so its two messages
are declared here (tensorflow_serving/config/monitoring_config.proto) and parsed strictly with
protobuf's text format: a misspelt field fails at start-up, as in TF Serving.

Metric names (prometheus_client appends `_total` to counters):
- `:tensorflow:serving:request_count{model_name,status}` (TF Serving's),
- `:tensorflow:serving:request_latency{model_name,API,entrypoint}` (histogram, microseconds,
  TF Serving's),
- `:tensorflow:cc:saved_model:load_attempt_count{model_path,status}` (TF's),
- `tailseg_serving_model_version_state{model_name,version,state}` (1 for the current state),
- `tailseg_serving_admission_rejected{reason}`, `tailseg_serving_pixels_in_flight`,
  `tailseg_serving_queued_requests` (tailseg's admission control; reason `batch_queue_full`
  counts requests refused by a full batching queue),
- with --enable_batching, TF Serving's batching_session metrics (servables/tensorflow/
  batching_session.cc): `:tensorflow:serving:batching_session:wrapped_run_count` (batched model
  calls), `:tensorflow:serving:batching_session:queuing_latency{thread_pool_name}` (histogram,
  microseconds) and `:tensorflow:serving:batching_session:processed_batch_size{model_name}`
  (histogram of images per model call, padding included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from tailseg.errors import ConfigError

DEFAULT_PATH = "/monitoring/prometheus/metrics"
# TF Serving's request_latency buckets: 10 us * 1.8^i, 33 buckets (up to ~2.3 hours).
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
# batching_session.cc's queuing_latency buckets: 100 us * 1.2^i, 52 buckets (~1 second).
QUEUING_BUCKETS_US = tuple(100 * 1.2**i for i in range(52))
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class MonitoringConfig:
    enable: bool = False
    path: str = DEFAULT_PATH


def _monitoring_config_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="tailseg_monitoring_config.proto",
                                               package="tensorflow.serving", syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=8, label=1)  # bool
    prometheus.field.add(name="path", number=2, type=9, label=1)  # string
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=11, label=1,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def read_monitoring_config(path: str | Path) -> MonitoringConfig:
    """Parse a MonitoringConfig text proto.

    Raises:
        ConfigError: unreadable file, unknown field, or a path not starting with "/".
    """
    from google.protobuf import text_format

    path = Path(path)
    try:
        message = text_format.Parse(path.read_text(), _monitoring_config_class()())
    except (OSError, text_format.ParseError) as error:
        raise ConfigError(f"{path}: not a readable MonitoringConfig text proto ({error}); "
                          "expected prometheus_config { enable: true path: \"...\" }") from error
    prometheus = message.prometheus_config
    config = MonitoringConfig(prometheus.enable, prometheus.path or DEFAULT_PATH)
    if not config.path.startswith("/"):
        raise ConfigError(f"{path}: prometheus_config path {config.path!r} must start with '/'")
    return config


class _StateCollector:
    """Model version states, read from the registry at scrape time."""

    def __init__(self, registry, admission):
        self.registry, self.admission = registry, admission

    def collect(self):
        states = GaugeMetricFamily("tailseg_serving_model_version_state",
                                   "1 for each model version's current state (TF Serving's "
                                   "ManagerState names)",
                                   labels=["model_name", "version", "state"])
        for name, versions in sorted(self.registry.states.copy().items()):
            for version, state in sorted(versions.copy().items()):
                states.add_metric([name, str(version), state.state], 1)
        yield states
        if self.admission is not None:
            yield GaugeMetricFamily("tailseg_serving_pixels_in_flight",
                                    "Image pixels admitted and not yet answered",
                                    value=self.admission.in_flight)
            yield GaugeMetricFamily("tailseg_serving_queued_requests",
                                    "Requests waiting for room in the pixel budget",
                                    value=self.admission.queued)


class ServingMetrics:
    """The server's metrics in a registry of its own (not prometheus_client's global one)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.",
            ["model_name", "status"], registry=self.registry)
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"], buckets=LATENCY_BUCKETS_US,
            registry=self.registry)
        self.load_attempts = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            ["model_path", "status"], registry=self.registry)
        self.rejected = Counter(
            "tailseg_serving_admission_rejected", "Requests refused by admission control.",
            ["reason"], registry=self.registry)
        self.batch_runs = Counter(
            ":tensorflow:serving:batching_session:wrapped_run_count",
            "Total count of run calls on the wrapped session", registry=self.registry)
        self.batch_queuing = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time spent (in microseconds) in queuing",
            ["thread_pool_name"], buckets=QUEUING_BUCKETS_US, registry=self.registry)
        self.batch_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Images per batched model call, padding included",
            ["model_name"], buckets=BATCH_SIZE_BUCKETS, registry=self.registry)

    def observe_batch(self, thread_pool_name: str, model_name: str, images: int,
                      queued_seconds: list[float]) -> None:
        self.batch_runs.inc()
        self.batch_size.labels(model_name).observe(images)
        for seconds in queued_seconds:
            self.batch_queuing.labels(thread_pool_name).observe(seconds * 1e6)

    def watch(self, model_registry, admission=None) -> None:
        self.registry.register(_StateCollector(model_registry, admission))

    def observe_request(self, model_name: str, api: str, entrypoint: str, status: str,
                        seconds: float) -> None:
        self.request_count.labels(model_name, status).inc()
        self.request_latency.labels(model_name, api, entrypoint).observe(seconds * 1e6)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) in Prometheus' text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
