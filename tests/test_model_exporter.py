"""The exporter step's reuse rule on the local ZenML stack: a model already exported (its
receipt names a version still on the volume) is reused only when this run's gate blessed it;
a rejected run exports nothing and reports no export, receipt or not."""

from typing import Annotated

import keras
import pytest
from zenml import Model, pipeline, step

from steps.export.model_exporter import model_exporter
from steps.materializers import KerasModelMaterializer
from tailseg.config import RunConfig
from tailseg.delivery import record_export

METRICS = {"iou": 0.5, "f1": 0.6, "precision": 0.6, "recall": 0.6, "accuracy": 0.9,
           "threshold": 0.5}
SPLIT = {"train": ["a"], "val": ["b"], "test": ["c"]}


@step(enable_cache=True, output_materializers={"unet_model": KerasModelMaterializer})
def cached_model() -> Annotated[keras.Model, "unet_model"]:
    """A tiny model, cached: every run after the first hands the exporter the same artifact,
    as a cached trainer does."""
    inputs = keras.Input((None, None, 3), name="image")
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="probability")(inputs)
    return keras.Model(inputs, outputs)


@pipeline(enable_cache=True, model=Model(name="tailseg-exporter-test"))
def exporting(blessed: bool, config: RunConfig) -> None:
    unet_model = cached_model()
    decision = {"blessed": blessed, "reasons": [] if blessed else ["iou 0.50 < 1.00"]}
    model_exporter(unet_model, METRICS, decision, SPLIT, {}, config)


def _export_info(run) -> dict:
    return run.steps["model_exporter"].outputs["export_info"][0].load()


@pytest.mark.usefixtures("zenml_home")
def test_a_recorded_export_is_reused_only_for_a_blessed_model(tmp_path):
    export_dir = tmp_path / "exports"
    config = RunConfig.model_validate({"export": {"export_dir": str(export_dir)}})
    first = exporting(blessed=False, config=config)
    assert _export_info(first) == {"exported": False, "reasons": ["iou 0.50 < 1.00"]}
    # The receipt of an earlier export of this very model artifact, its version on the volume.
    artifact = first.steps["cached_model"].outputs["unet_model"][0].id
    version_dir = export_dir / "serving" / "tailseg" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"graph")
    earlier = {"exported": True, "version": 1, "saved_model": str(version_dir),
               "onnx": str(export_dir / "onnx" / "tailseg" / "1" / "model.onnx")}
    record_export(export_dir, f"unet_model-{artifact}", earlier)

    rejected = exporting(blessed=False, config=config)
    assert rejected.steps["cached_model"].outputs["unet_model"][0].id == artifact
    assert _export_info(rejected) == {"exported": False, "reasons": ["iou 0.50 < 1.00"]}
    # Blessed, the same model is not exported twice: the receipt's version is reused.
    blessed = exporting(blessed=True, config=config)
    assert _export_info(blessed) == {**earlier, "reused": True}
    assert sorted(p.name for p in (export_dir / "serving" / "tailseg").iterdir()) == ["1"]
