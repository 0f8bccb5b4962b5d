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


def test_versions_in_the_model_repository_are_never_taken_again(tmp_path):
    # A Kubeflow pod's export_dir is empty every run: without the repository's versions every
    # export would be version 1, copied over the served one (io_utils.copy_dir overwrites
    # file by file and deletes nothing).
    from steps.export.model_exporter import copy_to_repository, repository_versions
    from tailseg.errors import ExportError

    repository = tmp_path / "repository"
    assert repository_versions(str(repository), "tailseg") == []
    for kind, version in (("serving", 1), ("serving", 3), ("onnx", 4)):
        (repository / kind / "tailseg" / str(version)).mkdir(parents=True)
    (repository / "serving" / "tailseg" / ".5.staging").mkdir()
    assert repository_versions(str(repository), "tailseg") == [1, 3, 4]

    local = tmp_path / "pod" / "serving" / "tailseg" / "5"
    local.mkdir(parents=True)
    (local / "saved_model.pb").write_bytes(b"new")
    copy_to_repository({str(local): str(repository / "serving" / "tailseg" / "5")})
    assert (repository / "serving" / "tailseg" / "5" / "saved_model.pb").read_bytes() == b"new"
    served = repository / "serving" / "tailseg" / "3" / "saved_model.pb"
    served.write_bytes(b"served")
    with pytest.raises(ExportError, match="already in the model repository"):
        copy_to_repository({str(local): str(served.parent)})
    assert served.read_bytes() == b"served"


def test_the_next_version_is_past_the_repositorys(tmp_path):
    from tailseg.publish import new_version

    (tmp_path / "pod" / "serving" / "tailseg" / "2").mkdir(parents=True)
    (tmp_path / "pod" / "onnx" / "tailseg" / "4").mkdir(parents=True)
    pod = str(tmp_path / "pod")
    assert new_version(str(tmp_path / "empty"), "tailseg") == 1
    assert new_version(pod, "tailseg") == 5
    assert new_version(pod, "tailseg", (1, 7)) == 8
    assert new_version(pod, "tailseg", (3,)) == 5
