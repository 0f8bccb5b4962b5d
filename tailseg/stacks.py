"""ZenML stacks as code: the files in infra/zenml/ and the run-configuration overlays.

Pure Python (no ZenML import): load a stack file, substitute ${VAR:-default} from the
environment, check its shape and the rules a remote stack must follow, and deep-merge a cluster
overlay (zenml.k8s.yaml) over zenml.yaml. Registering with ZenML happens in `tailseg stack`.

A stack file has the shape `zenml stack export` writes (without zenml_version)::

    stack_name: tailseg-k8s
    components:
      orchestrator: [{name: ..., flavor: kubernetes, configuration: {...}}]
      artifact_store: [{name: ..., flavor: s3, configuration: {path: s3://...}}]
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tailseg.errors import StackConfigError

STACK_DIR = Path(__file__).resolve().parent.parent / "infra" / "zenml"
ComponentType = Literal["orchestrator", "artifact_store", "container_registry", "image_builder",
                        "step_operator", "experiment_tracker", "model_deployer", "deployer"]
REMOTE_ORCHESTRATORS = {"kubernetes", "kubeflow"}
REMOTE_SCHEMES = ("s3://", "gs://", "az://", "abfs://")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Component(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    flavor: str
    configuration: dict[str, Any] = Field(default_factory=dict)


class StackFile(BaseModel):
    """One stack: a name and exactly one component per type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stack_name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    components: dict[ComponentType, list[Component]]

    @model_validator(mode="after")
    def _one_per_type(self) -> StackFile:
        for kind in ("orchestrator", "artifact_store"):
            if kind not in self.components:
                raise ValueError(f"a stack needs an {kind}")
        for kind, items in self.components.items():
            if len(items) != 1:
                raise ValueError(f"{kind}: exactly one component per type, got {len(items)}")
        return self

    def component(self, kind: str) -> Component | None:
        items = self.components.get(kind)  # type: ignore[call-overload]
        return items[0] if items else None

    @property
    def orchestrator_flavor(self) -> str:
        return self.components["orchestrator"][0].flavor

    @property
    def is_remote(self) -> bool:
        return self.orchestrator_flavor in REMOTE_ORCHESTRATORS


def substitute(value: Any, environ: dict[str, str] | None = None, where: str = "") -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a nested structure."""
    environ = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {key: substitute(item, environ, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, environ, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is None:
            raise StackConfigError(f"{where.lstrip('.')}: environment variable {name} is not "
                                   "set and has no default (write ${" + name + ":-value})")
        return default

    return _VARIABLE.sub(replace, value)


def _check_remote(stack: StackFile, source: str) -> None:
    """A pod cannot read the laptop's disk: remote stacks need remote storage and images."""
    problems = []
    path = str(stack.components["artifact_store"][0].configuration.get("path", ""))
    if not path.startswith(REMOTE_SCHEMES):
        problems.append(f"artifact_store path {path!r} is not remote ({', '.join(REMOTE_SCHEMES)})")
    for kind in ("container_registry", "image_builder"):
        if stack.component(kind) is None:
            problems.append(f"no {kind} (steps run from an image built and pushed by ZenML)")
    if problems:
        raise StackConfigError(f"{source}: {stack.orchestrator_flavor} stack "
                               f"{stack.stack_name!r}: " + "; ".join(problems))


def load_stack(path: str | Path, environ: dict[str, str] | None = None) -> StackFile:
    """Read, substitute and validate one stack file.

    Raises:
        StackConfigError: naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise StackConfigError(f"{path}: stack file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise StackConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise StackConfigError(f"{path}: expected a mapping at the top level")
    raw.pop("zenml_version", None)  # present in `zenml stack export` files
    try:
        stack = StackFile.model_validate(substitute(raw, environ))
    except ValidationError as error:
        raise StackConfigError(f"{path}: invalid stack file:\n{error}") from error
    if stack.is_remote:
        _check_remote(stack, str(path))
    return stack


def stack_files(directory: str | Path = STACK_DIR) -> dict[str, Path]:
    """Stack files by their short name (file stem): local, kubernetes, kubeflow."""
    return {path.stem: path for path in sorted(Path(directory).glob("*.yaml"))}


def load_stacks(directory: str | Path = STACK_DIR,
                environ: dict[str, str] | None = None) -> dict[str, StackFile]:
    return {name: load_stack(path, environ) for name, path in stack_files(directory).items()}


def merge_run_configs(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge a run-configuration overlay: mappings merge, null deletes, others replace."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            # Merged into {} when the base lacks the mapping, so the overlay's nulls never reach
            # ZenML as values (a null deletes, wherever it sits).
            below = merged.get(key)
            merged[key] = merge_run_configs(below if isinstance(below, dict) else {}, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def overlay_orchestrator(overlay: dict[str, Any]) -> str | None:
    """The orchestrator flavor an overlay targets, from its `orchestrator.<flavor>` settings."""
    sections = [overlay.get("settings") or {}]
    steps = (overlay.get("steps") or {}).values()
    sections += [(step or {}).get("settings") or {} for step in steps]
    flavors = {key.split(".", 1)[1] for section in sections for key in section
               if key.startswith("orchestrator.")}
    if len(flavors) > 1:
        raise StackConfigError(f"overlay mixes orchestrator settings for {sorted(flavors)}")
    return flavors.pop() if flavors else None
