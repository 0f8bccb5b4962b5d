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

from tailseg.errors import ConfigError, ServingRequestError
from tailseg.export import existing_versions
from tailseg.serving.labels import LabelMap, assign_version_labels
from tailseg.serving.model_config import ModelSource, read_model_config
from tailseg.serving.version import LoadedVersion, load_version, status_code_name

logger = logging.getLogger(__name__)


@dataclass
class VersionState:
    state: str  # LOADING, AVAILABLE, END (TF Serving's ManagerState names)
    error: str = ""  # set on END after the last failed load attempt
    error_code: str = "OK"  # gRPC status name of that failure
    attempts: int = 0
    retry_at: float = 0.0  # time.monotonic() of the next load attempt while LOADING
    last_error: str = ""


@dataclass
class ModelRegistry:
    """The served models: a fixed list of sources or the models.config that lists them."""

    sources: list[ModelSource]
    config_file: Path | None = None
    max_num_load_retries: int = 5  # TF Serving's default
    load_retry_interval: float = 60.0  # seconds; TF Serving's default is 1 minute
    poll_config: bool = True  # re-read config_file when it changes
    allow_labels_for_unavailable: bool = False  # --allow_version_labels_for_unavailable_models
    config_root: str | None = None  # --model_config_list_root_dir
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
                        self.apply_config(read_model_config(self.config_file, self.config_root),
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

    def _refresh_model(self, source: ModelSource, scan: bool = True) -> None:
        # Like TF Serving's file-system source: every integer directory is a version, complete
        # or not; an incomplete one fails to load and is retried. Without scan, only the
        # versions already seen are (re)tried.
        wanted = source.select(existing_versions(source.base_path) if scan else
                               list(self.states.get(source.name, {})))
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

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionState]]:
        """Every version's state, newest first, or one version's (get_model_status_impl.cc,
        which reads no version label: a status request by label lists every version)."""
        with self._lock:
            states = sorted(self.states.get(name, {}).items(), reverse=True)
        if version is not None:
            states = [(v, s) for v, s in states if v == version]
            if not states:
                raise ServingRequestError(f"Could not find version {version} of model {name}",
                                          "NOT_FOUND")
        elif not states:
            raise ServingRequestError(f"Could not find any versions of model {name}",
                                      "NOT_FOUND")
        return states

    def wait_for_initial_load(self, poll_seconds: float, interval: float = 0.1) -> None:
        """Return once every model's newest selected version is AVAILABLE.

        tensorflow_model_server opens no port before this (ServerCore::Create waits in
        ConnectSourcesWithFastInitialLoad for ServableRequest::Latest of every model): with no
        version on disk it waits, polling, for one; a failed load is retried as usual.

        Raises:
            ConfigError: the newest version failed its last load attempt; the server exits
                ("Some models did not become available").
        """
        warned: set[str] = set()
        while True:
            pending = False
            for source in self.sources:
                wanted = source.select(existing_versions(source.base_path))
                state = self.states.get(source.name, {}).get(wanted[-1]) if wanted else None
                if not wanted:
                    if source.name not in warned:  # file_system_storage_path_source.cc's words
                        logger.warning("No versions of servable %s found under base path %s",
                                       source.name, source.base_path)
                        warned.add(source.name)
                    pending = True
                elif state is None or state.state == "LOADING":
                    pending = True
                elif state.state == "END":
                    raise ConfigError(
                        "Failed to start server. Error: Some models did not become available: "
                        f"{{{source.name} version {wanted[-1]}: {state.error}}}")
            if not pending:
                return
            time.sleep(interval)
            with self._config_lock:
                # New version folders only with polling on (TF Serving's poll wait 0 scans
                # once); load retries in any case.
                for source in self.sources:
                    self._refresh_model(source, scan=poll_seconds > 0)

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

