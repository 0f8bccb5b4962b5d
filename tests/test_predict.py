"""Whole-scene prediction on rasters built here, with real exported models (TF and ONNX).

Two models: a 1x1 convolution whose output is a known function of the red band (pixels with
B4 above 0.15 reflectance are tailings), so masks and areas are exact; and a tiny random U-Net,
whose context dependence makes seams visible if the windows were blended wrongly.
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tailseg.backends import load_predictor
from tailseg.cli import main
from tailseg.config import ModelConfig, PredictConfig
from tailseg.errors import (
    BandCountError,
    ModelFormatError,
    OutputExistsError,
    ReflectanceConventionError,
)
from tailseg.export import export_model, write_saved_model
from tailseg.model import build_unet
from tailseg.predict import predict_scene
from tailseg.tiling import Tiling
from tests.rasters import corrupt_tile, write_image

UTM = "EPSG:32723"
UTM_TRANSFORM = from_origin(500000, 7776000, 10, 10)
SMALL = PredictConfig(window=64, overlap=32, margin=8, progress=False)
SQUARES = [(20, 30, 20, 20), (90, 150, 30, 40), (50, 60, 25, 25)]  # top, left, height, width


def load_red_model(directory):
    """probability = sigmoid(100 * (B4 - 0.15)), threshold 0.5 in the model's metadata,
    exported as version 1 of a TF Serving base path and loaded."""
    inputs = keras.Input((None, None, 3), name="image")
    layer = keras.layers.Conv2D(1, 1, activation="sigmoid", name="probability")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([np.array([0, 0, 100.0], np.float32).reshape(1, 1, 3, 1),
                       np.array([-15.0], np.float32)])
    path = directory / "1"
    write_saved_model(model, path, multiple=1, metadata={"threshold": 0.5})
    return load_predictor(path)


@pytest.fixture(scope="module")
def red_model(tmp_path_factory):
    return load_red_model(tmp_path_factory.mktemp("red"))


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = build_unet(ModelConfig(base_filters=2, depth=2, dropout=0), np.full(3, 0.1),
                       np.full(3, 0.05))
    return export_model(model, tmp_path_factory.mktemp("exports"), "tailseg", 4,
                        metadata={"threshold": 0.45})


@pytest.fixture
def utm_scene(tmp_path):
    """150 x 203 uint16 digital numbers in UTM 23S, nodata 0 in the first 13 columns and the
    first 7 rows, bright-red squares (tailings) of known size."""
    rng = np.random.default_rng(0)
    dn = rng.normal([[[400]], [[700]], [[500]]], 30, (3, 150, 203))
    truth = np.zeros((150, 203), np.uint8)
    for top, left, height, width in SQUARES:
        dn[2, top:top + height, left:left + width] = 2500
        truth[top:top + height, left:left + width] = 1
    valid = np.ones_like(truth, bool)
    valid[:, :13] = valid[:7] = False
    dn[:, ~valid] = 0
    path = write_image(tmp_path / "scene.tif", dn, "uint16", crs=UTM, transform=UTM_TRANSFORM,
                       nodata=0)
    return path, truth, valid


def test_outputs_on_the_input_grid_with_nodata_and_known_areas(utm_scene, red_model, tmp_path):
    path, truth, valid = utm_scene
    config = SMALL.model_copy(update={"convention": "dn"})
    result = predict_scene(path, red_model, tmp_path / "out", config)
    assert result.n_windows == Tiling(150, 203, 64, 32, 8).n_tiles == 4 * 6
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scene_mask.tif", "scene_probability.tif", "scene_tailings.geojson"]
    with rasterio.open(path) as src, rasterio.open(result.outputs["probability"]) as prob, \
            rasterio.open(result.outputs["mask"]) as mask_file:
        for out in (prob, mask_file):
            assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
            assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        probability, mask = prob.read(1), mask_file.read(1)
        assert prob.dtypes[0] == "float32" and mask_file.dtypes[0] == "uint8"
        assert mask_file.nodata == 255
    assert np.isnan(probability[~valid]).all() and np.isfinite(probability[valid]).all()
    assert (mask[~valid] == 255).all()
    np.testing.assert_array_equal(mask[valid], truth[valid])
    sites = json.loads((tmp_path / "out" / "scene_tailings.geojson").read_text())["features"]
    areas = sorted(f["properties"]["area_ha"] for f in sites)
    # Each square's pixels are all valid; 10 m pixels are 0.01 ha on the UTM grid, whose scale
    # factor near the central meridian is 0.9996.
    expected = sorted(h * w * 0.01 / 0.9996**2 for _, _, h, w in SQUARES)
    assert areas == pytest.approx(expected, rel=0.01)
    assert all(f["properties"]["mean_probability"] > 0.99 for f in sites)
    assert result.total_area_ha == pytest.approx(sum(expected), rel=0.01)


def _mosaic(tmp_path, chip=96):
    rng = np.random.default_rng(1)
    chips = rng.uniform(0.02, 0.3, (4, chip, chip, 3)).astype(np.float32)
    scene = np.concatenate([np.concatenate(chips[:2], axis=1),
                            np.concatenate(chips[2:], axis=1)])  # (2 chip, 2 chip, 3)
    path = write_image(tmp_path / "mosaic.tif", np.moveaxis(scene, -1, 0))
    return path, chips


def _read(path):
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def test_mosaic_equals_per_chip_prediction_away_from_seams(unet, tmp_path):
    path, chips = _mosaic(tmp_path)
    predictor = load_predictor(unet["saved_model"])
    per_chip = predictor(chips)[..., 0]
    # A margin above the depth-2 U-Net's receptive-field radius (about 23 pixels).
    config = PredictConfig(window=128, overlap=64, margin=24, progress=False)
    result = predict_scene(path, predictor, tmp_path / "blended", config)
    assert result.threshold == 0.45  # from the model's metadata
    probability = _read(result.outputs["probability"])
    mask = _read(result.outputs["mask"])
    np.testing.assert_array_equal(mask, (probability >= 0.45).astype(np.uint8))
    inner = slice(28, 68)  # at least 28 pixels from every chip border

    def worst(blended):
        return max(np.abs(blended[r * 96:(r + 1) * 96, c * 96:(c + 1) * 96][inner, inner]
                          - per_chip[2 * r + c][inner, inner]).max()
                   for r in (0, 1) for c in (0, 1))

    assert worst(probability) < 1e-5
    # The same check catches naive blending: without the margin, window borders leak in.
    naive = predict_scene(path, predictor, tmp_path / "naive",
                          PredictConfig(window=128, overlap=64, margin=0, progress=False))
    assert worst(_read(naive.outputs["probability"])) > 1e-4
    # ONNX Runtime gives the same map.
    onnx = predict_scene(path, load_predictor(unet["onnx"]), tmp_path / "onnx", config)
    np.testing.assert_allclose(_read(onnx.outputs["probability"]), probability, atol=1e-4)


def test_failure_leaves_nothing_and_outputs_are_not_overwritten(utm_scene, red_model, tmp_path):
    path, _, _ = utm_scene
    config = SMALL.model_copy(update={"convention": "dn", "batch_size": 1})
    calls = []

    def failing(images):
        calls.append(len(images))
        if len(calls) == 5:
            raise RuntimeError("model server went away")
        return red_model(images)

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="went away"):
        predict_scene(path, failing, out, config)
    assert not out.exists()  # nor the folder this run created
    first = predict_scene(path, red_model, out, config)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(OutputExistsError, match="scene_probability.tif"):
        predict_scene(path, red_model, out, config)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    again = predict_scene(path, red_model, out, config.model_copy(update={"overwrite": True}))
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    assert again.n_sites == first.n_sites == len(SQUARES)


def test_bad_inputs_fail_clearly_without_outputs(utm_scene, red_model, tmp_path):
    path, _, _ = utm_scene
    # Plain DN read with the baseline-04.00 offset would be far below zero.
    with pytest.raises(ReflectanceConventionError, match="scene.tif: convention 'dn_offset'.*"
                       "below -0.05.*'dn'.*fits"):
        predict_scene(path, red_model, tmp_path / "out",
                      SMALL.model_copy(update={"convention": "dn_offset"}))
    four = write_image(tmp_path / "four.tif", np.ones((4, 20, 20)), descriptions=None)
    with pytest.raises(BandCountError, match="four.tif: has 4 bands"):
        predict_scene(four, red_model, tmp_path / "out", SMALL)
    assert not (tmp_path / "out").exists()  # input is checked before the folder is made


def test_cli_predict_and_change(utm_scene, red_model, tmp_path, capsys):
    path, _, _ = utm_scene
    model = str(red_model.path)
    options = ["--model", model, "--window", "64", "--overlap", "32", "--margin", "8",
               "--convention", "dn", "--no-progress"]
    assert main(["predict", str(path), "--out", str(tmp_path / "before"), *options]) == 0
    assert json.loads(capsys.readouterr().out)["n_sites"] == len(SQUARES)
    # A later date: the first square doubled in size, the others are gone.
    with rasterio.open(path) as src:
        dn, profile = src.read(), src.profile
    dn[2, 50:75, 60:85] = dn[2, 90:120, 150:190] = 500
    dn[2, 20:40, 50:70] = 2500
    later = tmp_path / "later.tif"
    with rasterio.open(later, "w", **profile) as dst:
        dst.write(dn)
    assert main(["change", str(tmp_path / "before" / "scene_tailings.geojson"), str(later),
                 "--out", str(tmp_path / "change"), *options]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"grew": 1, "disappeared": 2}
    assert summary["area_change_ha"] == pytest.approx((400 - 625 - 1200) * 0.01 / 0.9996**2,
                                                      rel=0.01)
    # The BEFORE GeoJSON's mask is found beside it, the AFTER scene's is its own.
    assert summary["coverage_checked"] is True
    assert summary["before_mask"] == str(tmp_path / "before" / "scene_mask.tif")
    assert main(["predict", str(path), "--out", str(tmp_path / "x"), *options,
                 "--overlap", "60"]) == 2  # not a multiple of 16: a clear error, no traceback


def test_cli_change_compares_only_what_both_scenes_observed(utm_scene, red_model, tmp_path,
                                                            capsys):
    # A later scene with nodata (a cloud, the footprint's edge) over half of one square and
    # all of another: not "shrank" and "disappeared", but partly observed and unobserved.
    path, _, _ = utm_scene
    options = ["--model", str(red_model.path), "--window", "64", "--overlap", "32", "--margin",
               "8", "--convention", "dn", "--no-progress"]
    with rasterio.open(path) as src:
        dn, profile = src.read(), src.profile
    dn[:, 90:105, 150:190] = 0  # the top half of the 30 x 40 square
    dn[:, 45:80, 55:90] = 0  # all of the 25 x 25 square
    later = tmp_path / "later.tif"
    with rasterio.open(later, "w", **profile) as dst:
        dst.write(dn)
    assert main(["change", str(path), str(later), "--out", str(tmp_path / "change"),
                 *options]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"unchanged": 1, "partly_observed": 1, "unobserved": 1}
    assert summary["coverage_checked"] is True
    assert summary["area_change_ha"] == pytest.approx(0, abs=1e-3)
    features = json.loads((tmp_path / "change" / "scene_to_later_change.geojson").read_text())[
        "features"]
    (half,) = [f["properties"] for f in features if f["properties"]["status"] ==
               "partly_observed"]
    assert half["observed_share"] == pytest.approx(0.5, abs=1e-3)
    assert half["observed_status"] == "unchanged"
    assert half["area_after_ha"] == pytest.approx(600 * 0.01 / 0.9996**2, rel=0.01)


def test_cli_change_of_two_scenes_checks_both_before_predicting_either(utm_scene, red_model,
                                                                      tmp_path, capsys):
    path, _, _ = utm_scene
    options = ["--model", str(red_model.path), "--window", "64", "--overlap", "32", "--margin",
               "8", "--convention", "dn", "--no-progress"]
    out = tmp_path / "change"
    four = write_image(tmp_path / "four.tif", np.ones((4, 20, 20)), descriptions=None)
    # A bad AFTER scene, a bad option, an existing change file: each is found before the
    # BEFORE scene is predicted, so nothing is written.
    assert main(["change", str(path), str(four), "--out", str(out), *options]) == 2
    assert "four.tif: has 4 bands" in capsys.readouterr().err
    assert main(["change", str(path), str(path), "--out", str(out), *options,
                 "--min-change-ha", "-1"]) == 2
    assert "invalid change options" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "scene_to_scene_change.geojson").write_text("{}")
    assert main(["change", str(path), str(path), "--out", str(out), *options]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["scene_to_scene_change.geojson"]
    (out / "scene_to_scene_change.geojson").unlink()
    # An unreadable GeoJSON beside a scene is found before the scene is predicted.
    broken = tmp_path / "after_tailings.geojson"
    broken.write_text("not json")
    assert main(["change", str(path), str(broken), "--out", str(out), *options]) == 2
    assert "after_tailings.geojson: not a GeoJSON" in capsys.readouterr().err
    assert list(out.rglob("*")) == []
    # A failure after the BEFORE scene is predicted (an AFTER scene with a corrupt tile the
    # pre-flight check does not read) removes what this run predicted.
    # 120 x 900: the check's three 256-pixel sample windows across leave columns 256-321 unread.
    wide = write_image(tmp_path / "wide.tif", np.random.default_rng(1).normal(
        [[[400]], [[700]], [[500]]], 30, (3, 120, 900)), "uint16", crs=UTM,
        transform=UTM_TRANSFORM, nodata=0)
    corrupt = corrupt_tile(wide, tmp_path / "corrupt.tif", column=4)
    assert main(["change", str(path), str(corrupt), "--out", str(out), *options]) == 2
    assert "corrupt.tif: pixels of Window" in capsys.readouterr().err
    assert list(out.rglob("*")) == []  # outputs and the before/ after/ folders it made
    out.rmdir()
    assert main(["change", str(path), str(corrupt), "--out", str(out / "new"), *options]) == 2
    assert not out.exists()  # nor the --out folder and the parent this run created
    assert main(["change", str(path), str(path), "--out", str(out), *options]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"unchanged": len(SQUARES)}
    assert (out / "before" / "scene_tailings.geojson").is_file()
    assert (out / "after" / "scene_tailings.geojson").is_file()


@pytest.mark.slow  # about 20 s: starts a ZenML pipeline run on the local default stack
def test_batch_inference_pipeline(utm_scene, red_model, tmp_path, zenml_home):
    from pipelines.batch_inference import batch_inference

    path, _, _ = utm_scene
    config = SMALL.model_copy(update={"convention": "dn"})
    run = batch_inference(str(path), str(red_model.path), str(tmp_path / "out"), None, config)
    step = run.steps["scene_predictor"]
    assert step.outputs["n_sites"][0].load() == len(SQUARES)
    outputs = step.outputs["prediction_outputs"][0].load()
    assert sorted(outputs) == ["mask", "probability", "tailings"]
    assert [Path(outputs[k]).parent for k in sorted(outputs)] == [tmp_path / "out"] * 3
    assert all(Path(p).is_file() for p in outputs.values())


def test_serving_backend_over_loopback_matches_tf(utm_scene, red_model, tmp_path):
    from tailseg.predict import run_prediction
    from tailseg.serving.server import ServeConfig, start_server

    path, truth, valid = utm_scene
    config = SMALL.model_copy(update={"convention": "dn"})
    server = start_server(ServeConfig(model_base_path=str(red_model.path.parent), rest_port=0,
                                      grpc_port=0))
    try:
        urls = {"grpc": f"grpc://127.0.0.1:{server.grpc_port}/tailseg",
                "rest": f"http://127.0.0.1:{server.rest_port}/v1/models/tailseg"}
        results = {kind: run_prediction(path, url, tmp_path / kind, "serving", config)
                   for kind, url in urls.items()}
    finally:
        server.stop()
    local = _read(predict_scene(path, red_model, tmp_path / "tf", config).outputs["probability"])
    for result in results.values():
        np.testing.assert_allclose(_read(result.outputs["probability"]), local, atol=1e-6)
        np.testing.assert_array_equal(_read(result.outputs["mask"])[valid], truth[valid])
    with pytest.raises(ModelFormatError, match="needs a model server URL"):
        run_prediction(path, red_model.path, tmp_path / "x", "serving", config)
