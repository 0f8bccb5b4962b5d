"""What the pipeline looks up in the ZenML store (real store, temporary home): the drift
check's baseline is the band statistics of the same dataset's last validated run, never those
of another dataset; a production model version without its model or split is an error, not a
first release; production is re-evaluated at its own decision threshold, and one without a
threshold is an error too."""

import numpy as np
import pytest
from zenml import log_metadata, save_artifact
from zenml.client import Client
from zenml.enums import ModelStages

from steps.etl.dataset_validator import (
    BAND_STATISTICS,
    dataset_key,
    previous_band_statistics,
)
from steps.materializers import KerasModelMaterializer
from steps.promotion.model_gate import production_comparison
from tailseg.config import ModelConfig, RunConfig
from tailseg.errors import ProductionModelError
from tailseg.model import build_unet


def _record(stats: dict, data_dir) -> None:
    version = save_artifact(stats, name=BAND_STATISTICS)
    log_metadata({"dataset_key": dataset_key(data_dir), "data_dir": str(data_dir)},
                 artifact_version_id=version.id)


def test_previous_statistics_are_this_datasets_latest(tmp_path):
    first, other, fresh = tmp_path / "first", tmp_path / "other", tmp_path / "fresh"
    _record({"bands": {}, "n_chips": 1}, first)
    _record({"bands": {}, "n_chips": 2}, first)
    _record({"bands": {}, "n_chips": 3}, other)  # the most recent run overall
    assert previous_band_statistics(first)["n_chips"] == 2
    assert previous_band_statistics(other)["n_chips"] == 3
    assert previous_band_statistics(fresh) is None


def test_dataset_key_names_the_resolved_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dataset_key("data") == dataset_key(tmp_path / "data")
    assert dataset_key(tmp_path / "a") != dataset_key(tmp_path / "b")


def test_production_version_without_its_model_is_an_error_not_a_first_release():
    client = Client()
    client.create_model("tailseg-orphan")
    version = client.create_model_version("tailseg-orphan", name="hand-made")
    client.update_model_version("tailseg-orphan", version.id, stage=ModelStages.PRODUCTION)
    metrics = {"iou": 0.5, "threshold": 0.5, "per_chip": []}
    with pytest.raises(ProductionModelError, match=r"'hand-made' is in production but has no "
                                                   r"unet_model or data_split artifact"):
        production_comparison("tailseg-orphan", metrics, {"test": []}, RunConfig())
    assert production_comparison("tailseg-nothing-yet", metrics, {"test": []}, RunConfig()) is None


def _production(name: str, threshold: float | None, test_chips: list[str]) -> None:
    """A production version with a tiny U-Net, its split, and (maybe) its test threshold."""
    from zenml.model.utils import link_artifact_version_to_model_version

    client = Client()
    client.create_model(name)
    version = client.create_model_version(name, name="by-hand")
    model = build_unet(ModelConfig(base_filters=2, depth=1, dropout=0), np.full(3, .1),
                       np.full(3, .05))
    for artifact in (save_artifact(model, name="unet_model",
                                   materializer=KerasModelMaterializer),
                     save_artifact({"train": [], "val": [], "test": test_chips},
                                   name="data_split")):
        link_artifact_version_to_model_version(artifact, version)
    if threshold is not None:
        log_metadata({"test_threshold": threshold}, model_name=name, model_version=version.id)
    client.update_model_version(name, version.id, stage=ModelStages.PRODUCTION)


def test_production_is_scored_at_its_own_threshold_and_needs_one(bundled_data):
    chips = sorted(p.stem for p in (bundled_data / "masks").glob("chip_*.tif"))[:2]
    config = RunConfig().model_copy(update={"data": RunConfig().data.model_copy(
        update={"data_dir": str(bundled_data)})})
    candidate = {"iou": 0.5, "threshold": 0.3,
                 "per_chip": [{"chip_id": c, "counts": {"tp": 1, "fp": 1, "fn": 0, "tn": 2}}
                              for c in chips]}
    split = {"train": [], "val": [], "test": chips}
    _production("tailseg-own-threshold", 0.85, chips)
    comparison = production_comparison("tailseg-own-threshold", candidate, split, config)
    assert comparison.chip_ids == chips
    assert comparison.production["threshold"] == pytest.approx(0.85)
    _production("tailseg-no-threshold", None, chips)
    with pytest.raises(ProductionModelError, match="'by-hand' is in production but has no "
                                                   "test_threshold"):
        production_comparison("tailseg-no-threshold", candidate, split, config)
