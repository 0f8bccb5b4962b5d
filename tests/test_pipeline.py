"""The training pipeline end to end on the local ZenML stack (SQLite, in a temporary ZenML
home): a normal run exports and promotes; a run with an impossible gate exports nothing; the
exported model evaluates through the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.cli import main

TINY = {
    # The split hashes each chip id; with 8 chips these fractions leave 5/2/1 chips.
    "data": {"val_fraction": 0.4, "test_fraction": 0.4},
    "validation": {"min_valid_chips": 5, "max_quarantined_share": 0.2},
    "model": {"base_filters": 2, "depth": 2, "dropout": 0.0},
    "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 64,
                 "verbose": 0},
    "evaluation": {"panels": 1, "sweep": [0.3, 0.5, 0.7]},
    "gate": {"min_iou": 0.0, "max_regression": 1.0},
}


def write_config(path: Path, data_dir: Path, export_dir: Path, **overrides) -> Path:
    config = {**TINY, **overrides}
    config["data"] = {**config["data"], "data_dir": str(data_dir)}
    config["export"] = {"export_dir": str(export_dir)}
    path.write_text(yaml.safe_dump({"enable_cache": False, "model": {"name": "tailseg-test"},
                                    "parameters": {"config": config}}))
    return path


def subset(folder: Path, bundled_data: Path, chip_ids: list[str]) -> Path:
    """A dataset folder linking some of the bundled chips (validation then stays quick)."""
    for kind in ("images", "masks"):
        (folder / kind).mkdir(parents=True)
        for chip in chip_ids:
            (folder / kind / f"{chip}.tif").symlink_to(bundled_data / kind / f"{chip}.tif")
    return folder


EIGHT_AND_TRUNCATED = ["chip_000", "chip_002", "chip_003", "chip_004", "chip_005", "chip_006",
                       "chip_007", "chip_008", "chip_023"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, bundled_data) -> Path:
    return subset(tmp_path_factory.mktemp("data"), bundled_data, EIGHT_AND_TRUNCATED)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir, zenml_home):
    from pipelines.runner import run_pipeline

    root = tmp_path_factory.mktemp("pipeline")
    config = write_config(root / "zenml.yaml", data_dir, root / "exports")
    return root, run_pipeline("training", config)


def test_run_exports_a_versioned_model_and_promotes_it(first_run, data_dir):
    root, summary = first_run
    assert summary["status"] == "completed" and summary["blessed"]
    export = summary["export"]
    assert export["exported"] and export["version"] == 1
    saved_model = Path(export["saved_model"])
    assert saved_model == root / "exports" / "serving" / "tailseg" / "1"
    assert (saved_model / "saved_model.pb").is_file()
    assert (saved_model / "assets.extra" / "model_card.md").read_text().startswith("# Model card")
    assert Path(export["onnx"]).is_file()
    assert summary["stage"] == "production"
    # Planned and run epochs reach the run summary, the model card and the export metadata.
    assert summary["training"]["planned_epochs"] == summary["training"]["epochs_run"] == 1
    assert summary["training"]["stop_reason"] == "completed"
    card = (saved_model / "assets.extra" / "model_card.md").read_text()
    assert "Epochs run: 1, planned 1 (no time budget)" in card
    metadata = json.loads((saved_model / "assets.extra" / "tailseg.json").read_text())
    assert metadata["training_schedule"]["schedule_completed"] is True
    assert metadata["overlaps"] == "merge"  # evaluate scores against the same labels

    from zenml.client import Client
    from zenml.enums import ModelStages

    production = Client().get_model_version("tailseg-test", ModelStages.PRODUCTION)
    assert production.run_metadata["blessed"] is True
    assert production.get_artifact("unet_model") is not None
    run = Client().get_pipeline_run(summary["run"])
    split = run.steps["data_splitter"].outputs["data_split"][0].load()
    assert "chip_023" not in split["train"] + split["val"] + split["test"]
    assert sum(len(split[k]) for k in ("train", "val", "test")) == 8
    report = run.steps["dataset_validator"].outputs["validation_report"][0].load()
    assert "chip_023" in str(report)
    # The next run's drift baseline is this dataset's band statistics.
    from steps.etl.dataset_validator import previous_band_statistics

    stats = run.steps["dataset_validator"].outputs["band_statistics"][0].load()
    assert previous_band_statistics(data_dir) == stats


def test_impossible_gate_rejects_and_leaves_serving_untouched(first_run, data_dir, capsys):
    root, first = first_run
    before = sorted(p.name for p in (root / "exports" / "serving" / "tailseg").iterdir())
    config = write_config(root / "strict.yaml", data_dir, root / "exports",
                          gate={"min_iou": 1.0})
    assert main(["run", "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "REJECTED" in err and "iou >= 1.0" in err
    after = sorted(p.name for p in (root / "exports" / "serving" / "tailseg").iterdir())
    assert after == before == ["1"]
    assert not list((root / "exports" / "serving" / "tailseg").glob(".*staging*"))

    from zenml.client import Client
    from zenml.enums import ModelStages

    latest = Client().get_model_version("tailseg-test")
    assert latest.run_metadata["blessed"] is False
    assert latest.stage is None or latest.stage != ModelStages.PRODUCTION
    # The production model (version 1) was re-evaluated on this run's test chips at its own
    # threshold: the same model on the same chip scores its own test IoU again.
    run = Client().list_pipeline_runs(sort_by="desc:created", size=1).items[0]
    decision = run.steps["model_gate"].outputs["gate_decision"][0].load()
    assert decision["compared_chips"] == 1
    assert decision["baseline_iou"] == pytest.approx(first["test"]["iou"], abs=1e-4)


def test_unusable_dataset_stops_the_run_before_training(first_run, bundled_data, tmp_path,
                                                        capsys):
    root, _ = first_run
    data = subset(tmp_path / "data", bundled_data, ["chip_000", "chip_002", "chip_023"])
    config = write_config(tmp_path / "bad.yaml", data, root / "exports")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "chip_023" in err and "quarantined" in err
    assert sorted(p.name for p in (root / "exports" / "serving" / "tailseg").iterdir()) == ["1"]


def test_evaluate_cli_scores_the_export_with_each_backend(first_run, bundled_data, tmp_path):
    root, summary = first_run
    data = subset(tmp_path / "data", bundled_data, ["chip_000", "chip_002"])
    reports = {}
    for name, model in (("base", root / "exports" / "serving" / "tailseg"),
                        ("onnx", Path(summary["export"]["onnx"]))):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--model", str(model), "--data", str(data),
                     "--json", str(out), "--plots", str(tmp_path / name)]) == 0
        pngs = sorted(p.name for p in (tmp_path / name).glob("*.png"))
        assert pngs == ["best_test_chips.png", "precision_recall_curve.png",
                        "training_curves.png", "worst_test_chips.png"]
        assert all(p.read_bytes()[:4] == b"\x89PNG" for p in (tmp_path / name).glob("*.png"))
        reports[name] = json.loads(out.read_text())
    for report in reports.values():
        assert {"iou", "f1", "precision", "recall", "accuracy", "per_chip"} <= report.keys()
        assert [c["chip_id"] for c in report["per_chip"]] == ["chip_000", "chip_002"]
        assert report["threshold"] == summary["test"]["threshold"]
        # Site metrics: one labelled site per bundled chip; the two 448 x 448 chips, at 16.3
        # and 14.1 degrees south, cover 18.92 and 19.11 km2.
        assert report["sites"]["sites_labelled"] == 2
        assert report["sites"]["area_km2"] == pytest.approx(38.03, rel=1e-3)
    assert reports["base"]["iou"] == pytest.approx(reports["onnx"]["iou"], abs=1e-3)
    assert reports["base"]["sites"]["sites_found"] == reports["onnx"]["sites"]["sites_found"]
    # Test-time augmentation and a minimum site size are options of the same command.
    out = tmp_path / "tta.json"
    assert main(["evaluate", "--model", str(root / "exports" / "serving" / "tailseg"),
                 "--data", str(data), "--json", str(out), "--tta",
                 "--min-site-pixels", "1000000"]) == 0
    tta = json.loads(out.read_text())
    assert tta["tta"] is True and reports["base"]["tta"] is False
    assert tta["sites"]["sites_predicted"] == 0 and tta["sites"]["min_site_pixels"] == 1000000


def test_an_ensemble_run_exports_one_model_averaging_its_members(data_dir, tmp_path,
                                                                 zenml_home):
    from pipelines.runner import run_pipeline
    from tailseg.backends import load_predictor

    config = write_config(tmp_path / "zenml.yaml", data_dir, tmp_path / "exports",
                          training={**TINY["training"], "members": 2})
    run = yaml.safe_load(config.read_text())
    run["model"]["name"] = "tailseg-ensemble-test"  # versions of its own
    config.write_text(yaml.safe_dump(run))
    summary = run_pipeline("training", config)
    assert summary["status"] == "completed" and summary["export"]["exported"]
    schedules = summary["training"]["member_schedules"]
    assert [s["seed"] for s in schedules] == [42, 43] and summary["training"]["members"] == 2
    saved_model = Path(summary["export"]["saved_model"])
    card = (saved_model / "assets.extra" / "model_card.md").read_text()
    assert "Ensemble of 2 U-Nets" in card
    metadata = json.loads((saved_model / "assets.extra" / "tailseg.json").read_text())
    assert metadata["training_schedule"]["members"] == 2
    image = np.random.default_rng(0).uniform(0.03, 0.3, (1, 64, 64, 3)).astype(np.float32)
    tf_out = load_predictor(saved_model)(image)
    onnx_out = load_predictor(summary["export"]["onnx"])(image)
    assert tf_out.shape == (1, 64, 64, 1)
    np.testing.assert_allclose(tf_out, onnx_out, atol=1e-4)
