"""Bad command-line input gets a clear error naming the file and the problem, and loses
nothing: no output replaced unasked, no model or dataset file overwritten, no partial outputs.

The model is a tiny ONNX graph (brightness -> sigmoid) run by ONNX Runtime, so no test here
needs TensorFlow's start-up.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from pipelines.runner import effective_configuration
from tailseg.cli import main
from tailseg.config import load_run_yaml
from tailseg.errors import ConfigError
from tests.rasters import make_dataset, write_mask


def tree_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_tiny_onnx(path: Path, metadata: dict | None = None) -> Path:
    """sigmoid(40 * (mean band reflectance - 0.13)): the bright synthetic tailings are found."""
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[3], keepdims=1),
             helper.make_node("Sub", ["mean", "offset"], ["centred"]),
             helper.make_node("Mul", ["centred", "gain"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                      ["n", "h", "w", 3])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n", "h", "w", 1])],
        [helper.make_tensor("offset", TensorProto.FLOAT, [], [0.13]),
         helper.make_tensor("gain", TensorProto.FLOAT, [], [40.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"tailseg": json.dumps(metadata or {"threshold": 0.5})})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path]:
    """A model in a version folder as exported (onnx/tailseg/1/model.onnx) and a dataset."""
    model = write_tiny_onnx(tmp_path / "onnx" / "tailseg" / "1" / "model.onnx")
    return model, make_dataset(tmp_path / "data", n_chips=3, size=32)


def evaluate(model: Path, data: Path, *options: str) -> int:
    return main(["evaluate", "--model", str(model), "--data", str(data), *options])


def test_the_tiny_model_scores_the_synthetic_chips(setup, tmp_path):
    model, data = setup
    assert evaluate(model, data, "--json", str(tmp_path / "m.json")) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["iou"] > 0.9 and report["n_chips"] == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file


# --- 1. masks other than 0/1 ------------------------------------------------------------------

@pytest.mark.parametrize("dtype, label, shown", [("float32", 0.7, "0.7"), ("uint16", 256, "256"),
                                                 ("int16", -1, "-1")])
def test_evaluate_refuses_masks_that_are_not_0_and_1(setup, tmp_path, capsys, dtype, label,
                                                     shown):
    model, data = setup
    for path in sorted((data / "masks").iterdir()):
        mask = np.zeros((32, 32), dtype)
        mask[8:16, 8:16] = label
        path.unlink()
        write_mask(path, mask, dtype=dtype)
    assert evaluate(model, data, "--json", str(tmp_path / "m.json")) == 2
    error = capsys.readouterr().err
    assert "no usable chips (3 excluded)" in error
    assert f"chip_000.tif: {dtype} mask holds values other than 0 and 1: [{shown}]" in error
    assert not (tmp_path / "m.json").exists()


# --- 2. outputs that would replace a model, a dataset file or an earlier result --------------

@pytest.mark.parametrize("option", ["--json", "--plots"])
@pytest.mark.parametrize("target", ["model", "version", "mask", "dataset"])
def test_evaluate_never_writes_over_or_into_its_model_or_data(setup, tmp_path, capsys, option,
                                                              target):
    model, data = setup
    path = {"model": model, "version": model.parent / "metrics.json",
            "mask": data / "masks" / "chip_000.tif", "dataset": data / "scores"}[target]
    before = tree_state(tmp_path)
    assert evaluate(model, data, option, str(path), "--overwrite") == 2
    assert "lies inside the" in capsys.readouterr().err
    assert tree_state(tmp_path) == before


def test_an_existing_output_is_replaced_only_with_overwrite(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "metrics.json"
    out.write_text("earlier results\n")
    assert evaluate(model, data, "--json", str(out)) == 2
    assert f"--json {out}: already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "earlier results\n"
    assert evaluate(model, data, "--json", str(out), "--overwrite") == 0
    assert json.loads(out.read_text())["n_chips"] == 3


def test_split_refuses_existing_and_dataset_targets(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_chips=12, size=16)
    out = tmp_path / "split.json"
    out.write_text("{}\n")
    assert main(["split", str(data), "--json", str(out)]) == 2
    assert out.read_text() == "{}\n"
    before = tree_state(data)
    assert main(["split", str(data), "--json", str(data / "masks" / "chip_000.tif"),
                 "--overwrite"]) == 2
    assert tree_state(data) == before
    assert "split.json: already exists" in capsys.readouterr().err
    assert main(["split", str(data), "--json", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["data_dir"] == str(data)


# --- 3. numeric options out of range ----------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "argument --batch-size: '0': must be a whole number at least 1"),
    (["--batch-size", "-1"], "argument --batch-size: '-1': must be a whole number at least 1"),
    (["--batch-size", "two"], "argument --batch-size: 'two' is not a whole number"),
    (["--min-site-pixels", "-5"], "argument --min-site-pixels: '-5': must be a whole number"),
    (["--min-site-ha", "nan"], "argument --min-site-ha: 'nan': must be a number at least 0"),
    (["--min-site-ha", "-0.5"], "argument --min-site-ha: '-0.5': must be a number at least 0"),
    (["--threshold", "1"], "argument --threshold: '1': must be a number above 0 and below 1"),
])
def test_evaluate_numeric_options_are_checked_when_parsed(setup, capsys, argv, message):
    model, data = setup
    with pytest.raises(SystemExit) as exit_:
        evaluate(model, data, *argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["cv", "--folds", "1"], "--folds: '1': must be a whole number at least 2"),
    (["cv", "--epochs", "0"], "--epochs: '0': must be a whole number at least 1"),
    (["cv", "--max-minutes", "nan"], "--max-minutes: 'nan': must be a number above 0"),
    (["promote", "0"], "version: '0': must be a whole number at least 1"),
])
def test_other_numeric_options_are_checked_when_parsed(tmp_path, capsys, argv, message):
    models_config = tmp_path / "models.config"  # never the repository's, even if parsed
    extra = ["--models-config", str(models_config)] if argv[0] == "promote" else []
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *extra])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not models_config.exists()


# --- 4. configuration files of the wrong shape -------------------------------------------------

SHAPES = {"parameters: hello": "'parameters' must be a mapping",
          "parameters: [config]": "'parameters' must be a mapping",
          "parameters:\n  config: hello": "'parameters.config' must be a mapping",
          "parameters:\n  config: [data]": "'parameters.config' must be a mapping"}


@pytest.mark.parametrize("text", SHAPES)
def test_split_names_a_config_of_the_wrong_shape(setup, tmp_path, capsys, text):
    _, data = setup
    config = tmp_path / "run.yaml"
    config.write_text(text + "\n")
    assert main(["split", str(data), "--config", str(config)]) == 2
    assert f"{config}: {SHAPES[text]}" in capsys.readouterr().err


@pytest.mark.parametrize("text", SHAPES)
def test_run_names_a_config_of_the_wrong_shape(tmp_path, text):
    config = tmp_path / "zenml.yaml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=f"zenml.yaml: {SHAPES[text]}"):
        effective_configuration(config)
    good = tmp_path / "base.yaml"
    good.write_text(yaml.safe_dump({"parameters": {"config": {}}}))
    with pytest.raises(ConfigError, match=f"zenml.yaml: {SHAPES[text]}"):
        effective_configuration(good, overlay=config)


def test_cv_names_a_config_of_the_wrong_shape(tmp_path, capsys):
    config = tmp_path / "zenml.yaml"
    config.write_text("parameters: [config]\n")
    assert main(["cv", "--config", str(config), "--epochs", "1"]) == 2
    assert f"{config}: 'parameters' must be a mapping" in capsys.readouterr().err


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    config = tmp_path / "zenml.yaml"
    config.write_bytes("parameters:\n  config: {}\n# r\xe9sum\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="zenml.yaml: not a UTF-8 text file"):
        load_run_yaml(config)


# --- 6. nothing written when any output is refused ---------------------------------------------

@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_refused_json_target_leaves_no_plots(setup, tmp_path, capsys, overwrite):
    model, data = setup
    folder = tmp_path / "existing"
    folder.mkdir()
    assert evaluate(model, data, "--plots", str(tmp_path / "pl"), "--json", str(folder),
                    *overwrite) == 2
    assert f"--json {folder}: " in capsys.readouterr().err
    assert not (tmp_path / "pl").exists() and list(folder.iterdir()) == []


def test_an_existing_plot_is_refused_before_the_json_is_written(setup, tmp_path, capsys):
    model, data = setup
    plots = tmp_path / "pl"
    plots.mkdir()
    (plots / "worst_test_chips.png").write_bytes(b"earlier")
    assert evaluate(model, data, "--plots", str(plots), "--json", str(tmp_path / "m.json")) == 2
    assert "worst_test_chips.png: already exists" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
    assert [p.name for p in plots.iterdir()] == ["worst_test_chips.png"]
    assert evaluate(model, data, "--plots", str(plots), "--json", str(tmp_path / "m.json"),
                    "--overwrite") == 0
    assert sorted(p.name for p in plots.iterdir()) == [
        "best_test_chips.png", "precision_recall_curve.png", "worst_test_chips.png"]


def test_run_refuses_an_existing_summary_file_before_the_pipeline_starts(tmp_path, capsys):
    from pipelines.cli import main as tailseg_main

    summary = tmp_path / "summary.json"
    summary.write_text("{}")
    # No ZenML run starts: the check comes first (a missing config would fail later).
    assert tailseg_main(["run", "--config", str(tmp_path / "absent.yaml"),
                         "--json", str(summary)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert summary.read_text() == "{}"
    assert tailseg_main(["run", "--config", str(tmp_path / "zenml.yaml"),
                         "--json", str(tmp_path / "zenml.yaml")]) == 2
