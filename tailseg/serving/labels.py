"""Version labels: TF Serving's rule for assigning them (server_core.cc UpdateModelVersionLabelMap).

Each (re)load of the model config rebuilds the label map from the new config, before any version
of that config is loaded, and refuses the whole config (FAILED_PRECONDITION: "Request to assign
label to version N of model M, which is not currently available for inference") if a label
points to a version that is not AVAILABLE. At start-up nothing is loaded yet, so every label
fails: tensorflow_model_server exits with "Failed to start server". A refused reload keeps the
previous models and labels.

--allow_version_labels_for_unavailable_models lifts the rule for labels new to the server and
for labels that keep their version; moving an existing label to an unavailable version is still
refused. (TF Serving's force_allow_any_version_labels_for_unavailable_models, which lifts it for
every label, is a ServerCore option with no command-line flag, so it is not offered here.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tailseg.errors import ConfigError
from tailseg.serving.model_config import ModelSource

LabelMap = dict[str, dict[str, int]]  # model name -> label -> version
FLAG = "--allow_version_labels_for_unavailable_models"


class VersionLabelError(ConfigError):
    """A version label points to a version the server cannot label now."""


def assign_version_labels(sources: Iterable[ModelSource], available: Mapping[str, set[int]],
                          current: Mapping[str, Mapping[str, int]], allow_unavailable: bool,
                          origin: str) -> LabelMap:
    """The label map of a new config, checked as TF Serving checks it.

    Args:
        sources: the models of the new config.
        available: model name -> its AVAILABLE versions now.
        current: the label map in force (empty at start-up).
        allow_unavailable: --allow_version_labels_for_unavailable_models.
        origin: where the config came from (a file path), for the message.

    Raises:
        VersionLabelError: the first label that points to a version not AVAILABLE, unless the
            flag allows it; the message names origin, model, label and version, and the fix.
    """
    labels: LabelMap = {}
    for source in sources:
        for label, version in sorted(source.labels.items()):
            before = current.get(source.name, {}).get(label)
            moved = before is not None and before != version
            allowed = allow_unavailable and not moved
            if not allowed and version not in available.get(source.name, set()):
                raise VersionLabelError(
                    f"{origin}: model {source.name!r}: label {label!r} points to version "
                    f"{version}, which is not AVAILABLE (TF Serving: FAILED_PRECONDITION: Request "
                    f"to assign label to version {version} of model {source.name}, which is not "
                    f"currently available for inference). {_fix(label, before, version, moved)}")
            labels.setdefault(source.name, {})[label] = version
    return labels


def _fix(label: str, before: int | None, version: int, moved: bool) -> str:
    if moved:
        return (f"{FLAG} only covers labels new to the server, and {label!r} is at version "
                f"{before} now: serve version {version} first (add it to the version policy), "
                f"then move the label in a later config once it is AVAILABLE.")
    return (f"Labels are checked before any version of the config loads, so at start-up every "
            f"label fails: start with {FLAG}=true, or serve version {version} first and add the "
            f"label in a later config once it is AVAILABLE.")
