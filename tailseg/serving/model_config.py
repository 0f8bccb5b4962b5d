"""models.config: TF Serving's ModelServerConfig text proto, written with the serving protos.

One entry per model: base_path, model_platform "tensorflow", a version policy and version
labels (stable, canary). Written atomically (temp file + rename) so a server polling the file
never reads half of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tailseg.errors import ConfigError
from tailseg.textfile import write_atomically

CONFIG_FILE = "models.config"
Policy = Literal["latest", "all", "specific"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model's versions live and which of them to serve."""

    name: str
    base_path: Path
    policy: Policy = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = field(default_factory=dict)

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among the available ones (ascending)."""
        match self.policy:
            case "latest":
                return sorted(available)[-self.num_versions:]
            case "all":
                return sorted(available)
            case "specific":
                return sorted(set(available) & set(self.versions))
        raise ConfigError(f"unknown version policy {self.policy!r}")


def to_proto(sources: list[ModelSource]):
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for source in sources:
        entry = config.model_config_list.config.add(
            name=source.name, base_path=str(source.base_path), model_platform="tensorflow")
        policy = entry.model_version_policy
        match source.policy:
            case "latest":
                policy.latest.num_versions = source.num_versions
            case "all":
                policy.all.SetInParent()
            case "specific":
                policy.specific.versions.extend(source.versions)
        for label, version in sorted(source.labels.items()):
            entry.version_labels[label] = version
    return config


def write_model_config(path: str | Path, sources: list[ModelSource]) -> Path:
    """Write models.config atomically."""
    from google.protobuf import text_format

    return write_atomically(path, text_format.MessageToString(to_proto(sources)))


def is_absolute_uri(path: str) -> bool:
    """Not TF Serving's UriIsRelativePath: a URI with a scheme, or an absolute path."""
    return "://" in path or path.startswith("/")


def read_model_config(path: str | Path, root_dir: str | None = None) -> list[ModelSource]:
    """Parse a models.config (see sources_from_proto for root_dir and what is refused).

    Raises:
        ConfigError: unreadable file, bad text proto, or a config sources_from_proto refuses.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(path)
    try:
        config = text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())
    except (OSError, text_format.ParseError) as error:
        raise ConfigError(f"{path}: not a readable ModelServerConfig text proto ({error})") \
            from error
    return sources_from_proto(config, str(path), root_dir)


def sources_from_proto(config, origin: str, root_dir: str | None = None) -> list[ModelSource]:
    """The models of a ModelServerConfig proto (a file's, or a HandleReloadConfigRequest's).

    As server_core.cc's ValidateModelConfigList: a model may be listed once, and base paths
    must be absolute paths or URIs unless the server has --model_config_list_root_dir
    (root_dir), against which relative ones then resolve (UpdateModelConfigListRelativePaths).

    Args:
        origin: where the config came from, named in errors.

    Raises:
        ConfigError: no model_config_list, an empty one, a model listed twice, a relative base
            path without root_dir, a platform other than tensorflow, or a label naming a
            version the specific policy does not serve.
    """
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{origin}: expected a model_config_list")
    entries = config.model_config_list.config
    names = [entry.name for entry in entries]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{origin}: Illegal to list model {name}, multiple times in "
                              "config list")
    for entry in entries:
        if root_dir is None and not is_absolute_uri(entry.base_path):
            raise ConfigError(f"{origin}: Expected model {entry.name} to have an absolute path "
                              f"or URI; got base_path()={entry.base_path} (TF Serving resolves "
                              "relative ones only with --model_config_list_root_dir)")
    sources = []
    for entry in entries:
        if entry.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"{origin}: model {entry.name!r}: platform "
                              f"{entry.model_platform!r} is not supported; use 'tensorflow'")
        base = Path(entry.base_path)
        policy = entry.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        source = ModelSource(
            name=entry.name, base_path=base if is_absolute_uri(entry.base_path)
            else Path(root_dir) / base,
            policy=kind, num_versions=policy.latest.num_versions or 1,
            versions=tuple(policy.specific.versions), labels=dict(entry.version_labels))
        if kind == "specific" and not set(source.labels.values()) <= set(source.versions):
            raise ConfigError(f"{origin}: model {entry.name!r}: labels {source.labels} name "
                              f"versions outside the specific policy {list(source.versions)}")
        sources.append(source)
    if not sources:
        raise ConfigError(f"{origin}: model_config_list is empty")
    return sources


def labelled_sources(config_path: str | Path, name: str, base_path: str | Path, stable: int,
                     canary: int | None = None) -> list[ModelSource]:
    """The sources of config_path with model name serving exactly its stable (and canary)
    version; other models in an existing file are kept as they are. Writes nothing.

    Raises:
        ConfigError: the existing file is unreadable or refused (read_model_config).
    """
    config_path = Path(config_path)
    others = [s for s in read_model_config(config_path) if s.name != name] \
        if config_path.is_file() else []
    labels = {"stable": stable} | ({"canary": canary} if canary is not None else {})
    entry = ModelSource(name, Path(base_path), "specific", versions=tuple(sorted(set(
        labels.values()))), labels=labels)
    sources = [*others, entry]
    to_proto(sources)  # a source the proto refuses fails here, before anything is published
    return sources


def publish_labels(config_path: str | Path, name: str, base_path: str | Path, stable: int,
                   canary: int | None = None) -> Path:
    """(Re)write config_path so model name serves exactly its stable (and canary) version.

    Other models in an existing file are kept as they are.
    """
    return write_model_config(config_path, labelled_sources(config_path, name, base_path,
                                                            stable, canary))
