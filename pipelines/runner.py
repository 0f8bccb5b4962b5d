"""Running a pipeline from zenml.yaml: validate the tailseg parameters once, resolve paths
against the configuration file's folder, and hand ZenML the effective configuration."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import yaml

from pipelines import schedules
from tailseg.budget import training_schedule_summary
from tailseg.config import load_run_yaml, parse_config, run_parameters
from tailseg.workflow import resolve_paths

logger = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SITE_SUMMARY = ("sites_labelled", "sites_found", "site_recall", "false_sites_per_100km2",
                "area_error_median")


def effective_configuration(config_path: str | Path, overlay: str | Path | None = None) -> dict:
    """The run configuration (with an optional overlay merged over it) with validated tailseg
    parameters and absolute paths."""
    from tailseg.stacks import merge_run_configs

    config_path = Path(config_path).resolve()
    raw = load_run_yaml(config_path)
    parameters = run_parameters(raw, config_path)  # each file checked, so errors name it
    if overlay is not None:
        extra = load_run_yaml(overlay)
        run_parameters(extra, overlay)
        raw = merge_run_configs(raw, extra)
        parameters = run_parameters(raw, f"{config_path} with overlay {overlay}")
    config = resolve_paths(parse_config(parameters, str(config_path)), config_path.parent)
    # fail_fast re-raises a step's own exception (e.g. DatasetValidationError naming the chips)
    # instead of ZenML's generic "failure in step(s)" error.
    return {"execution_mode": "fail_fast", **raw,
            "parameters": {"config": config.model_dump(mode="json")}}


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


def run_pipeline(name: str, config_path: str | Path, overlay: str | Path | None = None) -> dict:
    """Run a pipeline on the active stack and summarise where its outputs went."""
    from zenml.client import Client
    from zenml.utils import source_utils

    from pipelines.training import training

    pipelines = {"training": training}
    effective = never_cache_side_effects(pipelines[name],
                                         effective_configuration(config_path, overlay))
    scheduled = schedules.schedule_name(effective) if effective.get("schedule") else None
    # ZenML refuses a second schedule of the same name: submitting again replaces it.
    replaced = schedules.remove_schedule(scheduled) if scheduled else None
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
