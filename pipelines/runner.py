"""Running a pipeline from zenml.yaml: validate the tailseg parameters once, resolve paths
against the configuration file's folder, and hand ZenML the effective configuration."""

from __future__ import annotations

import difflib
import logging
import shlex
import sys
import tempfile
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import yaml

from pipelines import schedules
from tailseg.config import load_run_yaml, parse_config, run_parameters
from tailseg.errors import ConfigError

logger = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SITE_SUMMARY = ("sites_labelled", "sites_found", "site_recall", "false_sites_per_100km2",
                "area_error_median")


def effective_configuration(config_path: str | Path, overlay: str | Path | None = None) -> dict:
    """The run configuration (with an optional overlay merged over it) with validated tailseg
    parameters, ZenML keys checked in each file, and absolute paths (the Docker settings' too)."""
    from tailseg.stacks import merge_run_configs
    from tailseg.workflow import resolve_paths  # imports TensorFlow: not at import time

    config_path = Path(config_path).resolve()
    raw = load_run_yaml(config_path)
    parameters = run_parameters(raw, config_path)  # each file checked, so errors name it
    check_zenml_keys(raw, config_path)
    if overlay is not None:
        extra = load_run_yaml(overlay)
        run_parameters(extra, overlay)
        check_zenml_keys(extra, overlay)
        raw = merge_run_configs(raw, extra)
        parameters = run_parameters(raw, f"{config_path} with overlay {overlay}")
    config = resolve_paths(parse_config(parameters, str(config_path)), config_path.parent)
    raw = absolute_docker_settings(raw, config_path.parent)
    # fail_fast re-raises a step's own exception (e.g. DatasetValidationError naming the chips)
    # instead of ZenML's generic "failure in step(s)" error.
    return {"execution_mode": "fail_fast", **raw,
            "parameters": {"config": config.model_dump(mode="json")}}


def absolute_docker_settings(run_config: dict, folder: Path) -> dict:
    """The run configuration with each Docker setting ZenML would resolve against the working
    directory made independent of it.

    ZenML 0.98 (utils/pipeline_docker_image_builder.py, gather_requirements_files) resolves
    `pyproject_path` with os.path.abspath, against the current directory, and runs
    `pyproject_export_command` through the shell, where `python` may be missing or another
    interpreter. Here the path is resolved against the configuration file's folder and a
    leading `python` becomes this interpreter.
    """
    def resolved(settings: dict | None) -> dict | None:
        docker = (settings or {}).get("docker")
        if not isinstance(docker, dict):
            return settings
        docker = dict(docker)
        if docker.get("pyproject_path"):
            docker["pyproject_path"] = str((folder / docker["pyproject_path"]).resolve())
        command = docker.get("pyproject_export_command")
        if isinstance(command, list) and command and command[0] in ("python", "python3"):
            docker["pyproject_export_command"] = [shlex.quote(sys.executable), *command[1:]]
        return {**settings, "docker": docker}

    steps = {name: {**step, "settings": resolved(step.get("settings"))}
             if isinstance(step, dict) and step.get("settings") else step
             for name, step in (run_config.get("steps") or {}).items()}
    return {**run_config, **({"settings": resolved(run_config["settings"])}
                             if run_config.get("settings") else {}),
            **({"steps": steps} if steps else {})}


def settings_classes() -> dict[str, type]:
    """The settings class of each `settings` key the run configurations may use."""
    from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import (
        KubeflowOrchestratorSettings,
    )
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings
    from zenml.utils.settings_utils import get_general_settings

    return {**get_general_settings(), "orchestrator.kubernetes": KubernetesOrchestratorSettings,
            "orchestrator.kubeflow": KubeflowOrchestratorSettings}


def _models(annotation) -> list[type]:
    """The pydantic models an annotation admits, Optional, Union and Annotated unwrapped."""
    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        arguments = typing.get_args(annotation)
        return [model for argument in (arguments[:1] if origin is typing.Annotated
                                       else arguments) for model in _models(argument)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def unknown_keys(data: dict, model: type, path: str = "") -> list[str]:
    """The key paths of `data` that `model` (a ZenML pydantic model) does not define, nested
    models, mappings of models (`steps`) and `settings` checked too."""
    fields = dict(model.model_fields)
    fields |= {field.alias: field for field in model.model_fields.values() if field.alias}
    unknown = []
    for key, value in data.items():
        where = f"{path}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), model.model_fields, n=1)
            unknown.append(where + (f" (did you mean {close[0]}?)" if close else ""))
        elif not isinstance(value, dict):
            continue
        elif key == "settings":
            classes = settings_classes()
            for name, settings in value.items():
                if name not in classes:
                    unknown.append(f"{where}.{name} (settings keys: {', '.join(classes)})")
                elif isinstance(settings, dict):
                    unknown += unknown_keys(settings, classes[name], f"{where}.{name}.")
        else:
            annotation = fields[key].annotation
            models = _models(annotation)
            if len(models) == 1:
                unknown += unknown_keys(value, models[0], f"{where}.")
            elif typing.get_origin(_optional(annotation)) in (dict, Mapping):
                items = _models(typing.get_args(_optional(annotation))[1])
                for name, item in value.items():
                    if len(items) == 1 and isinstance(item, dict):
                        unknown += unknown_keys(item, items[0], f"{where}.{name}.")
    return unknown


def _optional(annotation):
    """`X` of `Optional[X]`."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(arguments) == 1:
        return arguments[0]
    return annotation


def check_zenml_keys(run_config: dict, source: str | Path) -> None:
    """Refuse keys ZenML would drop without a word.

    ZenML 0.98's PipelineRunConfiguration and StepConfigurationUpdate ignore unknown keys and
    its settings classes keep them as extras, so `enable_cahce` or `parent_imag` validate and
    do nothing. Checked against the fields (and aliases) of those models and of the settings
    class of each `settings` key.

    Raises:
        ConfigError: naming the file and the path of each unknown key.
    """
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    unknown = unknown_keys(run_config, PipelineRunConfiguration)
    if unknown:
        raise ConfigError(f"{source}: unknown ZenML key(s) {'; '.join(unknown)}. ZenML "
                          "ignores them silently; fix the spelling or remove them")


def never_cache_side_effects(pipeline, configuration: dict) -> dict:
    """The run configuration with `steps.<name>.enable_cache: false` for every step of the
    pipeline declared `@step(enable_cache=False)`, whatever the configuration says.

    Those steps act outside the run (validation against the last statistics, the gate reading
    production, export to the model repository, promotion), so a cached result would skip the
    effect. ZenML 0.98 applies a run-level `enable_cache` to every step, over the step's own
    setting (config/compiler.py, `_apply_run_configuration`); a step's entry in the run
    configuration is applied after it (`_compile_step_invocation`) and wins.
    """
    prepared = pipeline.with_options()  # a copy: preparing records the step invocations
    prepared.prepare(**(configuration.get("parameters") or {}))
    steps = {name: dict(step or {}) for name, step in (configuration.get("steps") or {}).items()}
    for name, invocation in prepared.invocations.items():
        if invocation.step.configuration.enable_cache is False:
            if steps.get(name, {}).get("enable_cache"):
                logger.warning("steps.%s.enable_cache ignored: %s has side effects and always "
                               "runs", name, name)
            steps[name] = {**steps.get(name, {}), "enable_cache": False}
    return {**configuration, "steps": steps}


def run_pipeline(name: str, config_path: str | Path, overlay: str | Path | None = None,
                 orchestrator_schedule_deleted: bool = False) -> dict:
    """Run a pipeline on the active stack and summarise where its outputs went.

    `orchestrator_schedule_deleted`: the user deleted the old schedule's orchestrator side
    (the KFP recurring run) themselves, so replacing the schedule may delete only ZenML's record
    (pipelines/schedules.py, remove_schedule).
    """
    from zenml.client import Client
    from zenml.utils import source_utils

    from pipelines.training import training

    pipelines = {"training": training}
    effective = never_cache_side_effects(pipelines[name],
                                         effective_configuration(config_path, overlay))
    scheduled = schedules.schedule_name(effective) if effective.get("schedule") else None
    # ZenML refuses a second schedule of the same name: submitting again replaces it.
    replaced = (schedules.remove_schedule(scheduled, orchestrator_schedule_deleted)
                if scheduled else None)
    source_utils.set_custom_source_root(str(PROJECT_ROOT))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "run.yaml"
        path.write_text(yaml.safe_dump(effective, sort_keys=False))
        run = pipelines[name].with_options(config_path=str(path))()
    if scheduled:  # ZenML returns no run for a scheduled submission
        return schedules.submitted_schedule(scheduled, replaced)
    run = Client().get_pipeline_run(run.id)
    summary = {"run": run.name, "status": str(run.status.value), **stage_seconds(run)}
    if name == "training":
        summary |= _training_summary(run)
    return summary


def stage_seconds(run) -> dict:
    """How long the run and each of its steps took, in seconds, steps in the order they ran."""
    def seconds(model) -> float | None:
        if model.start_time is None or model.end_time is None:
            return None
        # Milliseconds: a quick step (the splitter on a fast machine) takes under 0.05 s, and
        # tenths would report it as taking no time at all.
        return round((model.end_time - model.start_time).total_seconds(), 3)

    steps = sorted(run.steps.values(), key=lambda step: step.start_time or run.start_time)
    return {"seconds": seconds(run), "stages": {step.name: seconds(step) for step in steps}}


def _load(run, step: str, output: str):
    return run.steps[step].outputs[output][0].load()


def _training_summary(run) -> dict:
    from tailseg.budget import training_schedule_summary

    metrics = _load(run, "model_evaluator", "test_metrics")
    decision = _load(run, "model_gate", "gate_decision")
    export = _load(run, "model_exporter", "export_info")
    training = _load(run, "model_trainer", "training_history")
    return {"training": training_schedule_summary(training),
            "test": {k: round(metrics[k], 4) for k in ("iou", "f1", "precision", "recall",
                                                        "accuracy", "threshold")},
            "sites": {k: metrics["sites"][k] for k in SITE_SUMMARY if "sites" in metrics},
            "blessed": decision["blessed"], "reasons": decision["reasons"], "export": export,
            "stage": _load(run, "model_promoter", "model_stage")}
