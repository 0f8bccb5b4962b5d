"""Which trained model went to which version of the model repository.

The exporter never comes from ZenML's cache (it writes to the model volume), so a scheduled run
over unchanged data reaches it again with the same, cached, model. A receipt per model, kept
under `<export_dir>/receipts/` (outside `serving/<name>/`, which TF Serving scans for integer
versions), makes that run a no-op while the version it names is still on the volume, and
re-exports when the volume was wiped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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
    path = receipt_path(export_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    partial.replace(path)
    return path


def repository_targets(info: dict[str, Any], export_dir: str | Path, repository_uri: str
                       ) -> dict[str, str]:
    """Local version directories of an export and where they go under repository_uri (the
    same relative layout, so a sync of <uri>/serving/ is a TF Serving model base)."""
    root = Path(export_dir).resolve()
    base = repository_uri.rstrip("/")
    sources = [Path(info["saved_model"]), Path(info["onnx"]).parent]
    return {str(source): f"{base}/{source.resolve().relative_to(root).as_posix()}"
            for source in sources}
