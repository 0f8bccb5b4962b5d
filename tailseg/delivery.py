"""Which trained model went to which version of the model repository.

The exporter never comes from ZenML's cache (it writes to the model volume), so a scheduled run
over unchanged data reaches it again with the same, cached, model. A receipt per model, kept
under `<export_dir>/receipts/` (outside `serving/<name>/`, which TF Serving scans for integer
versions), makes that run a no-op while the version it names is still on the volume, and
re-exports when the volume was wiped.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from tailseg.errors import ConfigError
from tailseg.textfile import write_atomically

RECEIPTS = "receipts"
_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def receipt_path(export_dir: str | Path, key: str) -> Path:
    if not _KEY.match(key):
        raise ValueError(f"receipt key {key!r}: use letters, digits, '.', '_' or '-' only")
    return Path(export_dir) / RECEIPTS / f"{key}.json"


def previous_export(export_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The export info recorded for this model, if its version directory still exists."""
    path = receipt_path(export_dir, key)
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    version_dir = info.get("saved_model")
    if not version_dir or not (Path(version_dir) / "saved_model.pb").is_file():
        return None
    return info


def record_export(export_dir: str | Path, key: str, info: dict[str, Any]) -> Path:
    """Write the receipt of an export (atomically: a reader never sees half a file)."""
    return write_atomically(receipt_path(export_dir, key),
                            json.dumps(info, indent=2, sort_keys=True, default=str))


def repository_targets(info: dict[str, Any], export_dir: str | Path, repository_uri: str
                       ) -> dict[str, str]:
    """Local version directories of an export and where they go under repository_uri (the
    same relative layout, so a sync of <uri>/serving/ is a TF Serving model base)."""
    root = Path(export_dir).resolve()
    base = repository_uri.rstrip("/")
    sources = [Path(info["saved_model"]), Path(info["onnx"]).parent]
    return {str(source): f"{base}/{source.resolve().relative_to(root).as_posix()}"
            for source in sources}


def promote_version(models_config: str | Path, model_name: str, version: int,
                    repository: str | Path | None = None) -> int | None:
    """Make `version` what a pinned TF Serving config serves and labels "stable" (promotion, or
    rollback to an older version); the leading comment lines of the file are kept.

    Args:
        repository: the model repository's root (export_dir), if mounted here: the version must
            exist under serving/<model_name>/ there.

    Returns:
        The version that was stable before, or None.

    Raises:
        FileNotFoundError: the version is not in the repository.
        ConfigError: the config does not parse or has no model of that name.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = Path(models_config)
    if repository is not None:
        saved_model = Path(repository) / "serving" / model_name / str(version) / "saved_model.pb"
        if not saved_model.is_file():
            raise FileNotFoundError(f"{saved_model} does not exist: version {version} was never "
                                    "exported to this repository (or was removed)")
    text = path.read_text()
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ConfigError(f"{path}: not a readable ModelServerConfig text proto ({error})") \
            from error
    models = [m for m in config.model_config_list.config if m.name == model_name]
    if not models:
        raise ConfigError(f"{path}: no model named {model_name!r}")
    model = models[0]
    previous = model.version_labels.get("stable")
    # One version, one label: a label on a version the policy does not load never resolves.
    model.model_version_policy.specific.ClearField("versions")
    model.model_version_policy.specific.versions.append(version)
    model.version_labels.clear()
    model.version_labels["stable"] = version
    lines = text.splitlines()
    header = "".join(f"{line}\n" for line in itertools.takewhile(
        lambda line: line.startswith("#"), lines))
    write_atomically(path, header + text_format.MessageToString(config))
    return previous
