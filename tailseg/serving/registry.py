"""Loaded model versions of a TF Serving-style server, kept in step with the file system.

A watcher thread polls each model's base path (and the models.config file, if any). As TF
Serving's AspiredVersionsManager with its AvailabilityPreservingPolicy
(core/availability_preserving_policy.cc):
- every integer directory the version policy selects is loaded, warmed up with its
  assets.extra/tf_serving_warmup_requests and only then made AVAILABLE;
- a failed load is retried up to max_num_load_retries times, load_retry_interval seconds apart
  (state LOADING meanwhile); after the last failure the version is END with the error in its
  status, and is not tried again;
- versions the policy no longer selects are unloaded (END) only once a selected version is
  AVAILABLE (or none is selected): a half-copied or corrupt new version never takes the
  serving one down.
Version labels follow TF Serving's rule (see tailseg.serving.labels): a config whose labels point
to versions that are not AVAILABLE is refused, at start-up or on reload (the previous config
stays in force and a changed file is tried again at each poll).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tailseg.errors import ConfigError, ModelFormatError, ServingRequestError
from tailseg.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE, existing_versions
from tailseg.serving.labels import LabelMap, assign_version_labels
from tailseg.serving.limits import check_alive
from tailseg.serving.model_config import ModelSource, read_model_config
from tailseg.serving.protocol import check_image, from_tensor_proto
from tailseg.serving.warmup import read_warmup_requests

logger = logging.getLogger(__name__)
EXPECTED = {"inputs": {INPUT_NAME: [-1, -1, -1, 3]}, "outputs": {OUTPUT_NAME: [-1, -1, -1, 1]}}


def read_signature_defs(saved_model_dir: Path) -> dict:
    """SignatureDef protos of the serve meta graph, as TF Serving reports them in metadata."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((saved_model_dir / "saved_model.pb").read_bytes())
    graph = next((g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags), None)
    if graph is None:
        raise ModelFormatError(f"{saved_model_dir}: no meta graph tagged 'serve'")
    return {k: v for k, v in graph.signature_def.items() if not k.startswith("__")}


def check_signature(saved_model_dir: Path, signature_defs: dict) -> None:
    """Names, dtypes and shapes of serving_default against the serving contract."""
    from tensorflow.core.framework import types_pb2

    if SIGNATURE not in signature_defs:
        raise ModelFormatError(f"{saved_model_dir}: no {SIGNATURE!r} signature "
                               f"(has {sorted(signature_defs)})")
    signature = signature_defs[SIGNATURE]
    for kind, expected in EXPECTED.items():
        tensors = getattr(signature, kind)
        if sorted(tensors) != sorted(expected):
            raise ModelFormatError(f"{saved_model_dir}: {SIGNATURE} {kind} are {sorted(tensors)};"
                                   f" the serving contract needs {sorted(expected)}")
        for name, shape in expected.items():
            info = tensors[name]
            actual = [d.size for d in info.tensor_shape.dim]
            if info.dtype != types_pb2.DT_FLOAT or actual != shape:
                raise ModelFormatError(
                    f"{saved_model_dir}: {SIGNATURE} {name!r} is "
                    f"{types_pb2.DataType.Name(info.dtype)} {actual}; expected DT_FLOAT {shape}")


@dataclass
class LoadedVersion:
    """One loaded, warmed-up version."""

    name: str
    version: int
    path: Path
    signature_defs: dict
    function: object
    keepalive: object = None

    def predict(self, images: np.ndarray, deadline: float | None = None,
                alive: Callable[[], bool] | None = None,
                chunk_pixels: int = 4 * 2**20) -> np.ndarray:
        """Probabilities of a checked batch, run in sub-batches of about chunk_pixels pixels.

        Between sub-batches the deadline and the client are checked, so a batch whose caller
        gave up stops early (one model call itself cannot be interrupted). Each image is
        independent in the U-Net (inference-mode batch norm), so splitting changes nothing.
        """
        import tensorflow as tf

        images = check_image(images)
        step = max(1, chunk_pixels // (images.shape[1] * images.shape[2]))
        outputs = []
        for start in range(0, len(images), step):
            check_alive(deadline, alive)
            batch = tf.constant(images[start:start + step])
            try:
                outputs.append(self.function(**{INPUT_NAME: batch})[OUTPUT_NAME].numpy())
            except tf.errors.OpError as error:  # TF Serving passes the run status through,
                # e.g. INVALID_ARGUMENT for a side the U-Net cannot halve evenly
                raise ServingRequestError(f"{type(error).__name__}: {error.message.strip()}",
                                          status_code_name(error)) from error
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def request_images(self, request) -> np.ndarray:
        """The checked images of a PredictRequest (the gRPC and warm-up path)."""
        names = sorted(request.inputs)
        if names != [INPUT_NAME]:
            raise ServingRequestError(f"request inputs are {names}; {SIGNATURE} takes exactly "
                                      f"[{INPUT_NAME!r}]")
        signature = request.model_spec.signature_name or SIGNATURE
        if signature not in self.signature_defs:
            raise ServingRequestError(f"Serving signature name: {signature!r} not found in "
                                      f"signature def of {self.name} version {self.version}")
        return check_image(from_tensor_proto(request.inputs[INPUT_NAME]))

    def predict_request(self, request) -> np.ndarray:
        return self.predict(self.request_images(request))


def load_version(name: str, path: Path, require_warmup: bool = False) -> LoadedVersion:
    """Load, check and warm up one version directory. Warm-up failures fail the load."""
    import tensorflow as tf

    signature_defs = read_signature_defs(path)
    check_signature(path, signature_defs)
    loaded = tf.saved_model.load(str(path))
    version = LoadedVersion(name, int(path.name) if path.name.isdigit() else 0, path,
                            signature_defs, loaded.signatures[SIGNATURE], loaded)
    requests = read_warmup_requests(path)
    if require_warmup and not requests:
        raise ModelFormatError(f"{path}: no warm-up requests in assets.extra/")
    for request in requests:
        output = version.predict_request(request)
        image = request.inputs[INPUT_NAME].tensor_shape.dim
        if list(output.shape) != [image[0].size, image[1].size, image[2].size, 1]:
            raise ModelFormatError(f"{path}: warm-up output shape {list(output.shape)} does not "
                                   f"match its input {[d.size for d in image]}")
    return version


@dataclass
class VersionState:
    state: str  # LOADING, AVAILABLE, END (TF Serving's ManagerState names)
    error: str = ""  # set on END after the last failed load attempt
    error_code: str = "OK"  # gRPC status name of that failure
    attempts: int = 0
    retry_at: float = 0.0  # time.monotonic() of the next load attempt while LOADING
    last_error: str = ""


def status_code_name(error: Exception) -> str:
    """The status code name TF Serving would report for a failed load or model run."""
    import grpc
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    if isinstance(error, tf.errors.OpError):  # e.g. NOT_FOUND for missing variables
        return {code.value[0]: code.name for code in grpc.StatusCode}.get(error.error_code,
                                                                           "UNKNOWN")
    if isinstance(error, ServingRequestError):
        return error.code
    if isinstance(error, FileNotFoundError):  # no saved_model.pb (yet)
        return "NOT_FOUND"
    if isinstance(error, DecodeError):  # truncated or corrupt saved_model.pb
        return "DATA_LOSS"
    if isinstance(error, ValueError):  # ModelFormatError: signature or warm-up contract
        return "INVALID_ARGUMENT"
    return "INTERNAL"


@dataclass
class ModelRegistry:
    """The served models: a fixed list of sources or the models.config that lists them."""

    sources: list[ModelSource]
    config_file: Path | None = None
    max_num_load_retries: int = 5  # TF Serving's default
    load_retry_interval: float = 60.0  # seconds; TF Serving's default is 1 minute
    poll_config: bool = True  # re-read config_file when it changes
    allow_labels_for_unavailable: bool = False  # --allow_version_labels_for_unavailable_models
    on_load_attempt: Callable[[str, str], None] = lambda path, status: None
    loaded: dict[str, dict[int, LoadedVersion]] = field(default_factory=dict)
    states: dict[str, dict[int, VersionState]] = field(default_factory=dict)
    labels: LabelMap = field(default_factory=dict)  # in force: model -> label -> version
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _config_lock: threading.RLock = field(default_factory=threading.RLock)
    _config_mtime: float = 0.0
    _logged_failure: str = ""

    def refresh(self) -> None:
        """One poll: re-read the config if it changed, load new versions, unload dropped ones.

        Raises:
            ConfigError: the first read of the config file fails, or its labels are refused.
                Later, a refused file is logged, the previous config kept, and the file tried
                again at the next poll (TF Serving re-reads it at every config poll).
        """
        with self._config_lock:
            first = not self._config_mtime
            if self.config_file is not None and (first or self.poll_config):
                mtime = self.config_file.stat().st_mtime
                if mtime != self._config_mtime:
                    try:
                        self.apply_config(read_model_config(self.config_file),
                                          str(self.config_file))
                        self._config_mtime = mtime
                    except ConfigError as error:
                        if first:
                            raise
                        if str(error) != self._logged_failure:
                            logger.error("ReloadConfig failed, previous config kept: %s", error)
                            self._logged_failure = str(error)
            self._refresh_models()

    def reload_config(self, sources: list[ModelSource], origin: str) -> None:
        """HandleReloadConfigRequest: check and apply a new model list, load its versions."""
        with self._config_lock:
            self.apply_config(sources, origin)
            self._refresh_models()

    def apply_config(self, sources: list[ModelSource], origin: str) -> None:
        """Make sources the served models, if their labels pass TF Serving's rule.

        Raises:
            VersionLabelError: a label points to a version that is not AVAILABLE (and the
                flag does not allow it); nothing changes.
        """
        with self._lock:
            available = {name: {v for v, s in states.items() if s.state == "AVAILABLE"}
                         for name, states in self.states.items()}
        labels = assign_version_labels(sources, available, self.labels,
                                       self.allow_labels_for_unavailable, origin)
        with self._lock:
            self.sources, self.labels = sources, labels
        self._logged_failure = ""

    def _refresh_models(self) -> None:
        for source in self.sources:
            self._refresh_model(source)
        with self._lock:
            for name in set(self.loaded) - {s.name for s in self.sources}:
                self._unload(name, list(self.loaded[name]))

    def _refresh_model(self, source: ModelSource) -> None:
        # Like TF Serving's file-system source: every integer directory is a version, complete
        # or not; an incomplete one fails to load and is retried.
        wanted = source.select(existing_versions(source.base_path))
        states = self.states.setdefault(source.name, {})
        for version in wanted:
            state = states.get(version)
            if state is None or state.state == "END" and not state.error:  # new or re-aspired
                self._attempt_load(source, version, 1)
            elif state.state == "LOADING" and time.monotonic() >= state.retry_at:
                self._attempt_load(source, version, state.attempts + 1)
        for version, state in list(states.items()):
            if version not in wanted and state.state == "LOADING":  # gone while being retried
                states[version] = VersionState("END", state.last_error or "no longer aspired",
                                               "CANCELLED", state.attempts)
        with self._lock:
            loaded = self.loaded.get(source.name, {})
            unwanted = sorted(set(loaded) - set(wanted))
            if wanted and not set(wanted) & set(loaded):
                # AvailabilityPreservingPolicy: keep the newest serving version until a
                # selected one is AVAILABLE.
                unwanted = unwanted[:-1]
            self._unload(source.name, unwanted)

    def _attempt_load(self, source: ModelSource, version: int, attempt: int) -> None:
        states = self.states[source.name]
        path = source.base_path / str(version)
        states[version] = VersionState("LOADING", attempts=attempt)
        try:
            loaded = load_version(source.name, path)
        except Exception as error:  # any load failure marks the version, the server goes on
            self.on_load_attempt(str(path), "fail")
            message = f"{type(error).__name__}: {error}"
            if attempt > self.max_num_load_retries:
                logger.error("model %s version %s failed to load after %d attempts: %s",
                             source.name, version, attempt, message)
                states[version] = VersionState("END", message, status_code_name(error), attempt)
            else:
                logger.warning("model %s version %s failed to load (attempt %d of %d), retrying "
                               "in %g s: %s", source.name, version, attempt,
                               self.max_num_load_retries + 1, self.load_retry_interval, message)
                states[version] = VersionState(
                    "LOADING", attempts=attempt, last_error=message,
                    retry_at=time.monotonic() + self.load_retry_interval)
            return
        self.on_load_attempt(str(path), "success")
        with self._lock:
            self.loaded.setdefault(source.name, {})[version] = loaded
            states[version] = VersionState("AVAILABLE", attempts=attempt)
        logger.info("model %s version %s AVAILABLE", source.name, version)

    def _unload(self, name: str, versions) -> None:
        for version in versions:
            self.loaded[name].pop(version, None)
            self.states[name][version] = VersionState("END")
            logger.info("model %s version %s unloaded", name, version)

    def source(self, name: str) -> ModelSource:
        for source in self.sources:
            if source.name == name:
                return source
        raise ServingRequestError(f"Servable not found for request: Latest({name})", "NOT_FOUND")

    def resolve(self, name: str, version: int | None = None,
                label: str | None = None) -> LoadedVersion:
        """The loaded version a request names (latest when neither version nor label)."""
        self.source(name)
        if label is not None:
            version = self.labels.get(name, {}).get(label)
            if version is None:
                raise ServingRequestError(f"Unrecognized servable version label: {label!r} of "
                                          f"model {name!r}", "NOT_FOUND")
        with self._lock:
            versions = self.loaded.get(name, {})
            if version is None and versions:
                return versions[max(versions)]
            if version in versions:
                return versions[version]
        what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        raise ServingRequestError(f"Servable not found for request: {what}", "NOT_FOUND")

    def status(self, name: str, version: int | None = None,
               label: str | None = None) -> list[tuple[int, VersionState]]:
        source = self.source(name)
        if label is not None:
            version = self.resolve(name, label=label).version
        states = sorted(self.states.get(source.name, {}).items(), reverse=True)
        if version is not None:
            states = [(v, s) for v, s in states if v == version]
            if not states:
                raise ServingRequestError(f"Could not find version {version} of model {name}",
                                          "NOT_FOUND")
        return states

    def ready(self) -> bool:
        with self._lock:
            return bool(self.sources) and all(self.loaded.get(s.name) for s in self.sources)

    def watch(self, poll_seconds: float, stop: threading.Event) -> threading.Thread:
        """Poll in a daemon thread until stop is set."""

        def loop() -> None:
            while not stop.wait(poll_seconds):
                try:
                    self.refresh()
                except Exception as error:  # keep serving what is loaded
                    logger.error("model poll failed: %s", error)

        thread = threading.Thread(target=loop, name="version-watcher", daemon=True)
        thread.start()
        return thread

