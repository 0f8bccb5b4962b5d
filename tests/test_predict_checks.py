"""Whole-scene prediction refuses nonsense (issue 14): radiometry, band order, CRS, output
folders, all-nodata scenes and provenance, on scenes built here, with a real exported model.

The model is test_predict's 1x1 convolution: probability = sigmoid(100 * (B4 - 0.15)), so a
wrong band order or reflectance convention changes the mask in a known way.
"""

import json
import logging
import os
import re
import shutil
import stat

import keras
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.transform import from_origin

import tailseg
from tailseg.backends import load_predictor
from tailseg.cli import main
from tailseg.config import PredictConfig
from tailseg.errors import (
    BandOrderError,
    CRSMissingError,
    ModelFormatError,
    OutputWriteError,
    RasterReadError,
    ReflectanceConventionError,
)
from tailseg.geopackage import read_geometry
from tailseg.predict import predict_scene
from tailseg.predictor import Predictor
from tests.rasters import corrupt_tile, write_image
from tests.test_predict import load_red_model

UTM = "EPSG:32723"
CONFIG = PredictConfig(window=64, overlap=32, margin=8, progress=False)
SQUARES = [(20, 30, 20, 20), (60, 100, 30, 40)]  # top, left, height, width: 4 and 12 ha


@pytest.fixture(scope="module")
def red_model(tmp_path_factory):
    return load_red_model(tmp_path_factory.mktemp("red"))


def reflectance_scene(seed: int = 0, height: int = 120, width: int = 160) -> np.ndarray:
    """(3, h, w) L1C-like reflectance: forest (dark in red), a river, bright tailings squares."""
    rng = np.random.default_rng(seed)
    scene = rng.normal([[[0.07]], [[0.06]], [[0.04]]], 0.005, (3, height, width))
    scene[:, :, 70:74] = np.array([0.08, 0.06, 0.03])[:, None, None]  # a river
    for top, left, h, w in SQUARES:
        scene[:, top:top + h, left:left + w] = np.array([0.12, 0.18, 0.30])[:, None, None]
    return scene


def truth_mask(height: int = 120, width: int = 160) -> np.ndarray:
    truth = np.zeros((height, width), np.uint8)
    for top, left, h, w in SQUARES:
        truth[top:top + h, left:left + w] = 1
    return truth


def dn_scene(path, offset: bool, **kwargs):
    """Sentinel-2 digital numbers: reflectance x 10000 (+ 1000 from baseline 04.00)."""
    dn = np.round(reflectance_scene() * 10000 + (1000 if offset else 0))
    kwargs.setdefault("crs", UTM)
    kwargs.setdefault("transform", from_origin(500000, 7776000, 10, 10))
    return write_image(path, dn, "uint16", nodata=0, **kwargs)


class Counting:
    """A predictor wrapper that counts calls: checks must fail before any inference."""

    def __init__(self, predictor):
        self.predictor, self.calls, self.metadata = predictor, 0, predictor.metadata

    def __call__(self, images):
        self.calls += 1
        return self.predictor(images)


def _read(path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def _mask(result) -> np.ndarray:
    return _read(result.outputs["mask"])


@pytest.mark.parametrize("offset, right, wrong", [(True, "dn_offset", "dn"),
                                                  (False, "dn", "dn_offset")])
def test_auto_picks_the_dn_convention_and_a_wrong_one_is_refused(offset, right, wrong,
                                                                 red_model, tmp_path, caplog):
    path = dn_scene(tmp_path / "scene.tif", offset)
    with caplog.at_level(logging.INFO):
        result = predict_scene(path, red_model, tmp_path / "auto", CONFIG)
    assert result.provenance["convention"] == right
    assert f"convention auto -> '{right}'" in caplog.text
    np.testing.assert_array_equal(_mask(result), truth_mask())
    counting = Counting(red_model)
    seen = "no dark pixels.*above 0.1" if wrong == "dn" else "below -0.05"
    with pytest.raises(ReflectanceConventionError,
                       match=f"scene.tif: convention '{wrong}'.*{seen}.*'{right}'.*fits.*"
                             "--force"):
        predict_scene(path, counting, tmp_path / "wrong",
                      CONFIG.model_copy(update={"convention": wrong}))
    assert counting.calls == 0 and not (tmp_path / "wrong").exists()
    # --force predicts anyway (and the wrong radiometry shows in the probabilities).
    forced = predict_scene(path, red_model, tmp_path / "forced",
                           CONFIG.model_copy(update={"convention": wrong, "force": True}))
    assert forced.provenance["convention"] == wrong
    assert np.nanmax(np.abs(_read(forced.outputs["probability"])
                            - _read(result.outputs["probability"]))) > 1e-3


def test_raw_dn_as_reflectance_and_reflectance_as_dn_are_refused(red_model, tmp_path):
    raw = dn_scene(tmp_path / "raw.tif", offset=True)
    for convention in ("reflectance", "gdal"):
        with pytest.raises(ReflectanceConventionError,
                           match=f"raw.tif: convention '{convention}'.*above 1.6.*dn_offset"):
            predict_scene(raw, red_model, tmp_path / "out",
                          CONFIG.model_copy(update={"convention": convention}))
    floats = write_image(tmp_path / "floats.tif", reflectance_scene(), crs=UTM)
    with pytest.raises(ReflectanceConventionError, match="no bright pixels.*'reflectance'"):
        predict_scene(floats, red_model, tmp_path / "out",
                      CONFIG.model_copy(update={"convention": "dn"}))
    assert predict_scene(floats, red_model, tmp_path / "out", CONFIG).provenance[
        "convention"] == "reflectance"


def test_auto_refuses_when_no_convention_fits(red_model, tmp_path):
    # uint16 values around 30: neither DN convention gives plausible reflectance.
    dark = write_image(tmp_path / "dark.tif", np.full((3, 40, 40), 30.0), "uint16", crs=UTM)
    with pytest.raises(ReflectanceConventionError, match="dark.tif: uint16 values.*none of "
                                                         "them is plausible"):
        predict_scene(dark, red_model, tmp_path / "out", CONFIG)


def test_band_order_without_descriptions_warns_and_bands_reorders(red_model, tmp_path, caplog):
    blue_first = dn_scene(tmp_path / "b2b3b4.tif", False, descriptions=None)
    dn = np.round(reflectance_scene()[::-1] * 10000)  # stored R, G, B, no descriptions
    red_first = write_image(tmp_path / "rgb.tif", dn, "uint16", crs=UTM, nodata=0,
                            transform=from_origin(500000, 7776000, 10, 10), descriptions=None)
    with caplog.at_level(logging.WARNING):
        assumed = predict_scene(red_first, red_model, tmp_path / "assumed", CONFIG)
    assert "rgb.tif: no band descriptions; assuming the bands are B2, B3, B4" in caplog.text
    assert "--bands" in caplog.text
    # Read as B2, B3, B4, the RGB file's blue band is taken for red: the squares are missed.
    assert not _mask(assumed).any()
    stated = predict_scene(red_first, red_model, tmp_path / "stated",
                           CONFIG.model_copy(update={"bands": ("B4", "B3", "B2")}))
    np.testing.assert_array_equal(_mask(stated), truth_mask())
    assert stated.provenance["bands"] == "B4,B3,B2"
    np.testing.assert_array_equal(
        _mask(predict_scene(blue_first, red_model, tmp_path / "blue", CONFIG)), truth_mask())
    # Descriptions that contradict the stated order (or B2, B3, B4) stay a clear error.
    described = dn_scene(tmp_path / "described.tif", False, descriptions=("red", "green", "blue"))
    with pytest.raises(BandOrderError, match="described.tif: band descriptions"):
        predict_scene(described, red_model, tmp_path / "x", CONFIG)
    with pytest.raises(BandOrderError, match="contradict --bands B2,B3,B4"):
        predict_scene(described, red_model, tmp_path / "x",
                      CONFIG.model_copy(update={"bands": ("B2", "B3", "B4")}))
    assert main(["predict", str(red_first), "--out", str(tmp_path / "cli"), "--model",
                 str(red_model.path), "--window", "64", "--bands", "red,green,blue",
                 "--no-progress"]) == 0
    assert main(["predict", str(red_first), "--out", str(tmp_path / "cli2"), "--model",
                 str(red_model.path), "--bands", "B4,B3", "--no-progress"]) == 2


def test_missing_crs_fails_before_inference(red_model, tmp_path):
    path = tmp_path / "nocrs.tif"
    dn = np.round(reflectance_scene() * 10000).astype("uint16")
    with rasterio.open(path, "w", driver="GTiff", width=160, height=120, count=3,
                       dtype="uint16") as dataset:
        dataset.write(dn)
    counting = Counting(red_model)
    with pytest.raises(CRSMissingError, match="nocrs.tif: has no coordinate reference system"):
        predict_scene(path, counting, tmp_path / "out", CONFIG)
    assert counting.calls == 0 and not (tmp_path / "out").exists()


def wide_dn_scene(path):
    """120 x 900 digital numbers: the radiometry check's three 256-pixel sample windows across
    leave columns 256-321 and 578-643 unread."""
    dn = np.round(reflectance_scene(height=120, width=900) * 10000)
    return write_image(path, dn, "uint16", nodata=0, crs=UTM,
                       transform=from_origin(500000, 7776000, 10, 10))


def test_a_corrupt_tile_is_a_read_error_naming_the_file_and_leaves_nothing(red_model, tmp_path):
    scene = wide_dn_scene(tmp_path / "wide.tif")
    # A corrupt tile the pre-flight sample reads (columns 0-63): found before inference.
    sampled = corrupt_tile(scene, tmp_path / "sampled.tif", column=0)
    counting = Counting(red_model)
    with pytest.raises(RasterReadError, match=r"sampled.tif: pixels of Window\(.*cannot be "
                                              r"read, truncated or corrupt\?"):
        predict_scene(sampled, counting, tmp_path / "out", CONFIG)
    assert counting.calls == 0 and not (tmp_path / "out").exists()
    # One it does not read (columns 256-319): found while predicting, in the first window
    # that reaches it; no output is left.
    unsampled = corrupt_tile(scene, tmp_path / "unsampled.tif", column=4)
    with pytest.raises(RasterReadError, match=r"unsampled.tif: pixels of Window\(col_off=224"):
        predict_scene(unsampled, counting, tmp_path / "out", CONFIG)
    assert not (tmp_path / "out").exists()


def test_a_failed_run_removes_the_folders_it_created_and_no_others(red_model, tmp_path, capsys):
    # The corrupt tile is found while predicting, after the output folders were made.
    unsampled = corrupt_tile(wide_dn_scene(tmp_path / "wide.tif"), tmp_path / "unsampled.tif",
                             column=4)
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RasterReadError, match="unsampled.tif: pixels of Window"):
        predict_scene(unsampled, red_model, kept / "new" / "x" / "y", CONFIG)
    assert kept.is_dir() and list(kept.iterdir()) == []
    assert main(["predict", str(unsampled), "--out", str(tmp_path / "o" / "new" / "x"),
                 "--model", str(red_model.path), "--window", "64", "--no-progress"]) == 2
    assert "unsampled.tif: pixels of Window" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # A folder that gained a file from elsewhere during the run is not removed.
    shared = tmp_path / "shared"

    class Writing(Counting):
        def __call__(self, images):
            (shared / "theirs.txt").write_text("another run's file")
            return super().__call__(images)

    with pytest.raises(RasterReadError, match="unsampled.tif"):
        predict_scene(unsampled, Writing(red_model), shared / "sub",
                      CONFIG.model_copy(update={"batch_size": 1}))
    assert [p.name for p in shared.iterdir()] == ["theirs.txt"]


def test_a_crs_without_a_transformation_to_wgs84_fails_before_inference(red_model, tmp_path):
    local = CRS.from_wkt('LOCAL_CS["mine grid",UNIT["metre",1],AXIS["Easting",EAST],'
                         'AXIS["Northing",NORTH]]')
    path = dn_scene(tmp_path / "local.tif", False, crs=local)
    counting = Counting(red_model)
    with pytest.raises(CRSMissingError, match="local.tif: the coordinate reference system 'mine "
                                              "grid' cannot be transformed to WGS84.*gdalwarp"):
        predict_scene(path, counting, tmp_path / "out", CONFIG)
    assert counting.calls == 0 and not (tmp_path / "out").exists()


def test_unwritable_output_fails_before_inference_with_exit_2(red_model, tmp_path, capsys):
    path = dn_scene(tmp_path / "scene.tif", False)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    counting = Counting(red_model)
    with pytest.raises(OutputWriteError, match="a_file: the output path exists and is not a "
                                               "folder"):
        predict_scene(path, counting, a_file, CONFIG)
    with pytest.raises(OutputWriteError, match="a_file/sub: the output folder cannot be written"):
        predict_scene(path, counting, a_file / "sub", CONFIG)
    assert counting.calls == 0 and a_file.read_text() == "not a folder"
    assert main(["predict", str(path), "--out", str(a_file), "--model", str(red_model.path),
                 "--no-progress"]) == 2
    assert "a_file: the output path exists and is not a folder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_before_inference(red_model, tmp_path):
    path = dn_scene(tmp_path / "scene.tif", False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputWriteError, match="locked: the output folder cannot be written"):
            predict_scene(path, red_model, locked, CONFIG)
    finally:
        locked.chmod(stat.S_IRWXU)


def test_all_nodata_scene_warns_and_writes_empty_outputs(red_model, tmp_path, caplog):
    path = write_image(tmp_path / "empty.tif", np.zeros((3, 100, 100)), "uint16", crs=UTM,
                       nodata=0)
    with caplog.at_level(logging.WARNING):
        result = predict_scene(path, red_model, tmp_path / "out", CONFIG)
    assert result.valid_pixels == 0 and result.n_sites == 0
    assert result.warnings == [f"{path}: every pixel is nodata; the outputs hold no data"]
    assert "every pixel is nodata" in caplog.text
    assert (_mask(result) == 255).all()


def test_provenance_rounded_coordinates_and_geopackage(red_model, tmp_path):
    path = dn_scene(tmp_path / "scene.tif", True)
    result = predict_scene(path, red_model, tmp_path / "out",
                           CONFIG.model_copy(update={"threshold": 0.4}))
    with rasterio.open(result.outputs["probability"]) as dataset:
        tags = dataset.tags()
    assert tags["TAILSEG_THRESHOLD"] == "0.4" and tags["TAILSEG_CONVENTION"] == "dn_offset"
    assert tags["TAILSEG_MODEL_PATH"] == str(red_model.path)
    assert tags["TAILSEG_VERSION"] == tailseg.__version__
    # No name or version in the model's metadata: from its TF Serving path <base>/<name>/<v>.
    assert (tags["TAILSEG_MODEL_NAME"], tags["TAILSEG_MODEL_VERSION"]) == (
        red_model.path.parent.name, "1")
    assert tags["TAILSEG_BANDS"] == "B2,B3,B4"
    with rasterio.open(result.outputs["mask"]) as dataset:
        assert dataset.tags()["TAILSEG_CONVENTION"] == "dn_offset"
    collection = json.loads(open(result.outputs["tailings"]).read())
    assert collection["properties"]["threshold"] == 0.4
    assert collection["properties"]["convention"] == "dn_offset"
    assert {"model_name", "model_version", "tailseg_version"} <= set(collection["properties"])
    coordinates = np.asarray(collection["features"][0]["geometry"]["coordinates"][0])
    np.testing.assert_array_equal(coordinates, np.round(coordinates, 7))
    assert any(len(repr(float(c)).split(".")[1]) == 7 for c in coordinates.ravel())
    assert collection["properties"]["tailseg_version"] == tailseg.__version__
    gpkg = predict_scene(path, red_model, tmp_path / "gpkg",
                         CONFIG.model_copy(update={"vector_format": "gpkg"}))
    assert gpkg.outputs["tailings"].endswith("scene_tailings.gpkg")
    import sqlite3

    with sqlite3.connect(gpkg.outputs["tailings"]) as connection:
        assert connection.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        rows = connection.execute("SELECT geom, area_ha FROM tailings ORDER BY id").fetchall()
        description = connection.execute("SELECT description FROM gpkg_contents").fetchone()[0]
    features = collection["features"]
    assert len(rows) == len(features) == len(SQUARES)
    for (blob, area), feature in zip(rows, features, strict=True):
        assert area == feature["properties"]["area_ha"]
        geometry = read_geometry(blob)
        assert geometry.geom_type == "MultiPolygon" and geometry.is_valid
        assert shapely.equals(geometry, shapely.geometry.shape(feature["geometry"]))
    assert json.loads(description)["convention"] == "dn_offset"


BAD_METADATA = [('{"threshold": 2.0}', "has threshold 2.0, not a number between 0 and 1"),
                ('{"threshold": null}', "has threshold None, not a number"),
                ('{"threshold": "abc"}', "has threshold 'abc', not a number"),
                ('{"threshold": true}', "has threshold True, not a number"),
                ("[0.5]", "is list, not a JSON object"),
                ('{"threshold": 0.5', "is not JSON")]


@pytest.mark.parametrize("content, problem", BAD_METADATA)
def test_bad_saved_model_metadata_is_a_model_format_error_naming_the_file(content, problem,
                                                                          red_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(red_model.path, model)
    (model / "assets.extra" / "tailseg.json").write_text(content)
    with pytest.raises(ModelFormatError, match=re.escape(f"tailseg.json {problem}")):
        load_predictor(model)


def tiny_onnx(path, metadata: str | None):
    """An ONNX model (sigmoid of the red band's broadcast) carrying metadata text, if given."""
    from onnx import TensorProto, helper, save

    shape = [None, None, None, 3]
    graph = helper.make_graph([helper.make_node("Sigmoid", ["image"], ["probability"])], "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("probability", TensorProto.FLOAT,
                                                             shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if metadata is not None:
        helper.set_model_props(model, {"tailseg": metadata})
    save(model, str(path))
    return path


@pytest.mark.parametrize("content, problem", BAD_METADATA)
def test_bad_onnx_metadata_is_a_model_format_error_naming_the_file(content, problem, tmp_path):
    path = tiny_onnx(tmp_path / "model.onnx", content)
    with pytest.raises(ModelFormatError,
                       match=re.escape(f"model.onnx: metadata_props['tailseg'] {problem}")):
        load_predictor(path)
    assert load_predictor(tiny_onnx(tmp_path / "good.onnx", '{"threshold": 0.3}')).metadata == {
        "threshold": 0.3}


def test_a_threshold_outside_0_1_fails_the_cli_before_any_output(red_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(red_model.path, model)
    (model / "assets.extra" / "tailseg.json").write_text('{"threshold": 2.0}')
    scene = dn_scene(tmp_path / "scene.tif", False)
    assert main(["predict", str(scene), "--out", str(tmp_path / "out"), "--model", str(model),
                 "--no-progress"]) == 2
    assert "tailseg.json has threshold 2.0, not a number between 0 and 1" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    # A predictor made elsewhere, with the same metadata, is refused as well.
    counting = Counting(red_model)
    elsewhere = Predictor(counting, "tf", model, {"threshold": 2.0})
    with pytest.raises(ModelFormatError, match="model: the model's threshold 2.0 is not"):
        predict_scene(scene, elsewhere, tmp_path / "out", CONFIG)
    assert counting.calls == 0 and not (tmp_path / "out").exists()
    # --threshold overrides the model's.
    result = predict_scene(scene, elsewhere, tmp_path / "out",
                           CONFIG.model_copy(update={"threshold": 0.5}))
    np.testing.assert_array_equal(_mask(result), truth_mask())


def test_a_pixel_missing_one_band_is_nodata_and_filled_before_a_model_with_context(tmp_path):
    # B3 alone is nodata over a block: those pixels are nodata in the outputs (a pixel is
    # valid only if every band is), and before inference all their bands are filled with the
    # window's band means over the valid pixels. The model is a 3 x 3 convolution leaning on
    # B3, so a neighbour that read the raw nodata value (0) would change the probability of
    # the valid pixels around the block. One window covers the scene: its band means are the
    # scene's.
    dn = np.round(reflectance_scene(height=40, width=48) * 10000)
    dn[1, 10:16, 12:20] = 0  # B3 only; B2 and B4 stay valid
    path = write_image(tmp_path / "partial.tif", dn, "uint16", nodata=0, crs=UTM,
                       transform=from_origin(500000, 7776000, 10, 10))
    inputs = keras.Input((None, None, 3))
    layer = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")
    model = keras.Model(inputs, layer(inputs))
    kernel = np.zeros((3, 3, 3, 1), np.float32)
    kernel[:, :, 1], kernel[:, :, 2] = 30.0, 10.0
    layer.set_weights([kernel, np.array([-20.0], np.float32)])
    config = CONFIG.model_copy(update={"convention": "dn", "threshold": 0.5})
    result = predict_scene(path, lambda images: model.predict(images, verbose=0),
                           tmp_path / "out", config)
    valid = np.ones((40, 48), bool)
    valid[10:16, 12:20] = False
    filled = np.moveaxis(dn, 0, -1).astype(np.float32) / 10000
    filled[~valid] = filled[valid].mean(axis=0)
    expected = model.predict(filled[None], verbose=0)[0, ..., 0]
    probability, mask = _read(result.outputs["probability"]), _mask(result)
    assert result.valid_pixels == valid.sum()
    assert np.isnan(probability[~valid]).all() and (mask[~valid] == 255).all()
    np.testing.assert_allclose(probability[valid], expected[valid], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mask[valid], expected[valid] >= 0.5)


def test_a_probability_exactly_at_the_threshold_is_tailings(tmp_path):
    # One window (no blending to round the values): the predictor gives exactly 0.5 on the
    # bright squares and 0.25 elsewhere; at threshold 0.5 the squares are tailings.
    path = write_image(tmp_path / "scene.tif", np.round(reflectance_scene(height=40, width=48)
                                                        * 10000), "uint16", nodata=0, crs=UTM,
                       transform=from_origin(500000, 7776000, 10, 10))
    config = CONFIG.model_copy(update={"convention": "dn", "threshold": 0.5})
    result = predict_scene(path, lambda images: np.where(images[..., 2:] > 0.15, 0.5, 0.25),
                           tmp_path / "out", config)
    truth = truth_mask(height=40, width=48)
    assert truth.any()
    assert (_read(result.outputs["probability"])[truth == 1] == 0.5).all()
    np.testing.assert_array_equal(_mask(result), truth)
    assert result.n_sites == 1
