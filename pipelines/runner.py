"""Running a pipeline from zenml.yaml: validate the tailseg parameters once, resolve paths
against the configuration file's folder, and hand ZenML the effective configuration."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import yaml

from tailseg.config import load_run_yaml, parse_config
from tailseg.workflow import resolve_paths

logger = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def effective_configuration(config_path: str | Path, overlay: str | Path | None = None) -> dict:
    """The run configuration (with an optional overlay merged over it) with validated tailseg
    parameters and absolute paths."""
    from tailseg.stacks import merge_run_configs

    config_path = Path(config_path).resolve()
    raw = load_run_yaml(config_path)
    if overlay is not None:
        raw = merge_run_configs(raw, load_run_yaml(overlay))
    parameters = (raw.get("parameters") or {}).get("config") or {}
    config = resolve_paths(parse_config(parameters, str(config_path)), config_path.parent)
    # fail_fast re-raises a step's own exception (e.g. DatasetValidationError naming the chips)
    # instead of ZenML's generic "failure in step(s)" error.
    return {"execution_mode": "fail_fast", **raw,
            "parameters": {"config": config.model_dump(mode="json")}}


def run_pipeline(name: str, config_path: str | Path, overlay: str | Path | None = None) -> dict:
    """Run a pipeline on the active stack and summarise where its outputs went."""
    from zenml.client import Client
    from zenml.utils import source_utils

    from pipelines.training import training

    pipelines = {"training": training}
    effective = effective_configuration(config_path, overlay)
    source_utils.set_custom_source_root(str(PROJECT_ROOT))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "run.yaml"
        path.write_text(yaml.safe_dump(effective, sort_keys=False))
        run = pipelines[name].with_options(config_path=str(path))()
    run = Client().get_pipeline_run(run.id)
    summary = {"run": run.name, "status": str(run.status.value)}
    if name == "training":
        summary |= _training_summary(run)
    return summary


def _load(run, step: str, output: str):
    return run.steps[step].outputs[output][0].load()


def _training_summary(run) -> dict:
    metrics = _load(run, "model_evaluator", "test_metrics")
    decision = _load(run, "model_gate", "gate_decision")
    export = _load(run, "model_exporter", "export_info")
    return {"test": {k: round(metrics[k], 4) for k in ("iou", "f1", "precision", "recall",
                                                        "accuracy", "threshold")},
            "blessed": decision["blessed"], "reasons": decision["reasons"], "export": export,
            "stage": _load(run, "model_promoter", "model_stage")}
