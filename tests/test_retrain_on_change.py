"""Retrain-on-change on the local ZenML store, with the per-step caching of zenml.k8s.yaml:
an unchanged dataset reruns only the side-effect steps and exports nothing new; one edited
mask pixel under the same file name retrains and exports a new version."""

import shutil
from pathlib import Path

import numpy as np
import yaml

from tailseg.config import load_run_yaml
from tests.test_pipeline import EIGHT_AND_TRUNCATED, TINY

ROOT = Path(__file__).resolve().parent.parent
RETRAINED = {"data_splitter", "hyperparameter_tuner", "model_trainer", "model_evaluator"}
ALWAYS_RUN = {"dataset_validator", "model_gate", "model_exporter", "model_promoter"}


def _cache_settings() -> dict:
    """zenml.k8s.yaml's per-step caching, without its Kubernetes settings."""
    steps = load_run_yaml(ROOT / "zenml.k8s.yaml")["steps"]
    return {name: {key: value for key, value in step.items()
                   if key in ("enable_cache", "cache_policy")} for name, step in steps.items()}


def _statuses(run_name: str) -> dict[str, str]:
    from zenml.client import Client

    run = Client().get_pipeline_run(run_name)
    return {name: step.status.value for name, step in run.steps.items()}


# Three tiny training runs, about 35 s on 2 cores: in the default suite, as the only test of
# what a cached evaluator leaves on the model version (the third run's gate needs it).
def test_only_changed_data_retrains_and_side_effect_steps_always_run(
        tmp_path, bundled_data, monkeypatch, zenml_home):
    import rasterio

    from pipelines.runner import run_pipeline

    data = tmp_path / "data"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
        for chip in EIGHT_AND_TRUNCATED:
            shutil.copy(bundled_data / kind / f"{chip}.tif", data / kind / f"{chip}.tif")
    monkeypatch.setenv("TAILSEG_DATA_DIR", str(data))  # read by dataset_cache_key
    config = {**TINY, "data": {**TINY["data"], "data_dir": str(data)},
              "export": {"export_dir": str(tmp_path / "exports")}}
    path = tmp_path / "zenml.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "tailseg-retrain-test"},
                                    "steps": _cache_settings(),
                                    "parameters": {"config": config}}))

    first = run_pipeline("training", path)
    assert first["export"]["exported"] and first["export"]["version"] == 1
    second = run_pipeline("training", path)  # same chips
    statuses = _statuses(second["run"])
    assert {s for s, v in statuses.items() if v == "cached"} == RETRAINED
    assert {s for s, v in statuses.items() if v == "completed"} == ALWAYS_RUN
    assert second["export"]["version"] == 1 and second["export"]["reused"] is True
    assert not (tmp_path / "exports" / "serving" / "tailseg" / "2").exists()
    # The cached evaluator logged nothing this run; the version now in production still carries
    # its test metadata (logged by the gate), which the next run's gate re-scores it by.
    from zenml.client import Client
    from zenml.enums import ModelStages

    production = Client().get_model_version("tailseg-retrain-test", ModelStages.PRODUCTION)
    assert abs(production.run_metadata["test_threshold"] - first["test"]["threshold"]) < 1e-4

    mask_path = data / "masks" / f"{EIGHT_AND_TRUNCATED[0]}.tif"
    with rasterio.open(mask_path, "r+") as mask:  # one pixel, same file name
        pixels = mask.read(1)
        pixels[0, 0] = 1 - pixels[0, 0] if pixels[0, 0] in (0, 1) else pixels[0, 0]
        assert np.any(pixels != mask.read(1))
        mask.write(pixels, 1)
    third = run_pipeline("training", path)
    statuses = _statuses(third["run"])
    assert {s for s, v in statuses.items() if v == "completed"} == RETRAINED | ALWAYS_RUN
    assert third["export"]["exported"] and third["export"]["version"] == 2
