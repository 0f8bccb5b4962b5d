"""Blending defaults from the model's receptive field (issue 14): measured on real U-Nets, and
at the default settings the blended map equals a single-window prediction within 1e-4."""

import keras
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tailseg.backends import load_predictor
from tailseg.config import ModelConfig, PredictConfig
from tailseg.export import write_saved_model
from tailseg.model import build_unet
from tailseg.predict import predict_scene, resolve_blending
from tailseg.receptive import blend_defaults, context_radius
from tests.rasters import write_image


def _unet_model(depth: int) -> keras.Model:
    keras.utils.set_random_seed(5)
    return build_unet(ModelConfig(base_filters=4, depth=depth, dropout=0), np.full(3, 0.1),
                      np.full(3, 0.05))


def _unet(depth: int):
    model = _unet_model(depth)

    def predict(images):
        return np.asarray(model(images, training=False))

    return predict


@pytest.fixture(scope="module")
def deep_unet():
    """The shipped architecture's depth (4 poolings), few filters to stay fast."""
    return _unet(4)


def test_measured_radius_matches_the_architecture(deep_unet):
    # Analytic receptive fields of the U-Net (two 3x3 convolutions per level, 2x2 poolings):
    # 2 x 20 + 1 pixels at depth 2 and 2 x 100 + 1 at depth 4, widened by up to 2^depth - 1 on
    # one side by the phase of the pooling grid. The measurement must fall in that range.
    shallow = context_radius(_unet(2))
    deep = context_radius(deep_unet)
    assert 18 <= shallow <= 20 + 3 and 90 <= deep <= 100 + 15
    assert blend_defaults(shallow) == (32, 96)
    assert blend_defaults(deep) == (112, 256)  # was margin 32 / overlap 128 before issue 14


def test_defaults_come_from_the_model_and_explicit_values_win(deep_unet):
    config = PredictConfig(window=512)
    assert (config.margin, config.overlap) == (None, None)
    resolved = resolve_blending(config, deep_unet, 2000, 2000)
    assert (resolved.margin, resolved.overlap) == (112, 256)
    assert resolve_blending(config.model_copy(update={"margin": 48}), deep_unet, 2000,
                            2000).overlap == 128
    assert resolve_blending(config, deep_unet, 400, 500).margin == 0  # one window, no seams


def test_blended_map_equals_one_window_at_the_default_settings(deep_unet, tmp_path):
    rng = np.random.default_rng(2)
    scene = rng.uniform(0.02, 0.3, (768, 768, 3)).astype(np.float32)
    path = write_image(tmp_path / "scene.tif", np.moveaxis(scene, -1, 0), crs="EPSG:32723",
                       transform=from_origin(500000, 7776000, 10, 10))
    single = deep_unet(scene[None])[0, ..., 0]

    def worst(config: PredictConfig) -> float:
        result = predict_scene(path, deep_unet, tmp_path / str(config.margin), config)
        with rasterio.open(result.outputs["probability"]) as dataset:
            return float(np.abs(dataset.read(1) - single).max())

    # 512-pixel windows at the default margin and overlap (112 / 256): 2 x 2 windows.
    defaults = PredictConfig(window=512, progress=False, threshold=0.99)  # few noise sites
    assert worst(defaults) < 1e-4
    # The pre-issue-14 defaults (margin 32, overlap 128) leave seams the check sees.
    assert worst(defaults.model_copy(update={"margin": 32, "overlap": 128})) > 1e-3


def test_exported_savedmodel_gives_the_same_radius(deep_unet, tmp_path):
    # The serving function pads with each image's mean, (x - mean) + mean, which couples all
    # pixels at the float32 rounding level; the measurement must see through that.
    path = write_saved_model(_unet_model(4), tmp_path / "1", multiple=16)
    exported, direct = context_radius(load_predictor(path)), context_radius(deep_unet)
    assert abs(exported - direct) <= 2  # the fringe sits at the 1e-5 tolerance
    assert blend_defaults(exported) == blend_defaults(direct) == (112, 256)
