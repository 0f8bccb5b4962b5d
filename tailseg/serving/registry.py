"""Loaded model versions of a TF Serving-style server, kept in step with the file system.

A watcher thread polls each model's base path (and the models.config file, if any): new version
directories are loaded, warmed up with their assets.extra/tf_serving_warmup_requests and then
made AVAILABLE; versions the policy no longer selects are unloaded (state END).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tailseg.errors import ModelFormatError, ServingRequestError
from tailseg.export import INPUT_NAME, OUTPUT_NAME, SIGNATURE, existing_versions
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

    def predict(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        images = check_image(images)
        return self.function(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()

    def predict_request(self, request) -> np.ndarray:
        """Run a PredictRequest's inputs (the gRPC and warm-up path)."""
        names = sorted(request.inputs)
        if names != [INPUT_NAME]:
            raise ServingRequestError(f"request inputs are {names}; {SIGNATURE} takes exactly "
                                      f"[{INPUT_NAME!r}]")
        signature = request.model_spec.signature_name or SIGNATURE
        if signature not in self.signature_defs:
            raise ServingRequestError(f"Serving signature name: {signature!r} not found in "
                                      f"signature def of {self.name} version {self.version}")
        return self.predict(from_tensor_proto(request.inputs[INPUT_NAME]))


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
    error: str = ""


@dataclass
class ModelRegistry:
    """The served models: a fixed list of sources or the models.config that lists them."""

    sources: list[ModelSource]
    config_file: Path | None = None
    loaded: dict[str, dict[int, LoadedVersion]] = field(default_factory=dict)
    states: dict[str, dict[int, VersionState]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _config_mtime: float = 0.0

    def refresh(self) -> None:
        """One poll: re-read the config if it changed, load new versions, unload dropped ones."""
        if self.config_file is not None and self.config_file.stat().st_mtime != self._config_mtime:
            self._config_mtime = self.config_file.stat().st_mtime
            self.sources = read_model_config(self.config_file)
        for source in self.sources:
            self._refresh_model(source)
        with self._lock:
            for name in set(self.loaded) - {s.name for s in self.sources}:
                self._unload(name, list(self.loaded[name]))

    def _refresh_model(self, source: ModelSource) -> None:
        on_disk = [v for v in existing_versions(source.base_path)
                   if (source.base_path / str(v) / "saved_model.pb").is_file()]
        wanted = source.select(on_disk)
        states = self.states.setdefault(source.name, {})
        for version in wanted:
            if version in states and states[version].state != "END":
                continue
            if version in states and states[version].error:
                continue  # failed before; a new version number is needed
            states[version] = VersionState("LOADING")
            try:
                loaded = load_version(source.name, source.base_path / str(version))
            except Exception as error:  # any load failure marks the version, the server goes on
                logger.error("model %s version %s failed to load: %s", source.name, version, error)
                states[version] = VersionState("END", f"{type(error).__name__}: {error}")
                continue
            with self._lock:
                self.loaded.setdefault(source.name, {})[version] = loaded
                states[version] = VersionState("AVAILABLE")
            logger.info("model %s version %s AVAILABLE", source.name, version)
        with self._lock:
            self._unload(source.name, set(self.loaded.get(source.name, {})) - set(wanted))

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
        source = self.source(name)
        if label is not None:
            if label not in source.labels:
                raise ServingRequestError(f"Unrecognized servable version label: {label!r} of "
                                          f"model {name!r}", "NOT_FOUND")
            version = source.labels[label]
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

