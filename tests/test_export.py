"""The serving contract, reloaded: signature names, dtypes, any size, TF == ONNX, versions."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow import keras

from tailseg.backends import load_predictor, resolve_saved_model
from tailseg.config import ModelConfig
from tailseg.errors import ExportError, ModelFormatError
from tailseg.export import (
    export_model,
    next_version,
    serving_function,
    staged_directories,
    staged_directory,
)
from tailseg.model import build_unet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    config = ModelConfig(base_filters=2, dropout=0)
    model = build_unet(config, np.full(3, 0.1), np.full(3, 0.05))
    first = export_model(model, root, "tailseg", config.multiple, metadata={"threshold": 0.4},
                         extra_assets={"model_card.md": "# card"})
    second = export_model(model, root, "tailseg", config.multiple)
    return model, root, first, second


def test_signature_contract(exported):
    _, _, first, _ = exported
    signature = tf.saved_model.load(first["saved_model"]).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == ["image"]
    assert inputs["image"].dtype == tf.float32 and inputs["image"].shape.as_list() == [
        None, None, None, 3]
    outputs = signature.structured_outputs
    assert list(outputs) == ["probability"] and outputs["probability"].dtype == tf.float32


@pytest.mark.parametrize("size", [(1, 1), (37, 50), (64, 64)])
def test_any_size_and_tf_equals_onnx_equals_keras(exported, size):
    model, _, first, _ = exported
    x = np.random.default_rng(1).uniform(0.02, 0.4, (2, *size, 3)).astype(np.float32)
    tf_out = load_predictor(first["saved_model"])(x)
    onnx_out = load_predictor(first["onnx"])(x)
    assert tf_out.shape == (2, *size, 1)
    assert np.abs(tf_out - onnx_out).max() < 1e-4
    if size == (64, 64):
        np.testing.assert_allclose(tf_out, model.predict(x, verbose=0), atol=1e-5)


def test_versions_increase_and_metadata_travels(exported):
    _, root, first, second = exported
    assert (first["version"], second["version"]) == (1, 2)
    assert resolve_saved_model(root / "serving" / "tailseg").name == "2"
    predictor = load_predictor(first["saved_model"])
    assert predictor.metadata["threshold"] == 0.4
    assert load_predictor(first["onnx"]).metadata["threshold"] == 0.4
    assert (root / "serving/tailseg/1/assets.extra/model_card.md").read_text() == "# card"


def test_a_copied_onnx_file_keeps_its_threshold(exported, tmp_path, caplog):
    import shutil

    import onnx

    _, _, first, _ = exported
    copy = Path(shutil.copy(first["onnx"], tmp_path / "model.onnx"))  # outside exports/onnx/
    metadata = load_predictor(copy).metadata
    assert (metadata["threshold"], metadata["version"]) == (0.4, 1)
    assert metadata["bands"] == ["B2", "B3", "B4"]
    # A file without the metadata (e.g. converted by hand) says its threshold is unknown.
    proto = onnx.load(str(copy))
    del proto.metadata_props[:]
    onnx.save(proto, str(copy))
    with caplog.at_level("WARNING", logger="tailseg.backends"):
        assert load_predictor(copy).metadata == {}
    assert "carries no tailseg metadata" in caplog.text
    # Metadata that is JSON but not an object is refused, naming the file.
    proto.metadata_props.add(key="tailseg", value="[0.4]")
    onnx.save(proto, str(copy))
    with pytest.raises(ModelFormatError, match=r"model.onnx: metadata_props\['tailseg'\] is "
                                                "list, not a JSON object"):
        load_predictor(copy)


def test_a_named_version_that_is_no_longer_free_writes_nothing(exported):
    # publish_model names the version in the model card before exporting; if another export
    # took that number meanwhile, the card would describe the wrong version.
    model, root, _, _ = exported
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    with pytest.raises(ExportError, match="version 2 was requested but the next free version "
                                          "is 3"):
        export_model(model, root, "tailseg", 4, version=2)
    with pytest.raises(ExportError, match="next free version is 3"):
        export_model(model, root, "tailseg", 4, version=4)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before


def test_existing_version_is_never_overwritten_and_failures_leave_nothing(tmp_path):
    final = tmp_path / "serving" / "m" / "1"
    final.mkdir(parents=True)
    (final / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="never overwritten"):
        with staged_directory(final):
            pass
    assert (final / "keep").read_text() == "x"
    other = tmp_path / "serving" / "m" / "2"
    with pytest.raises(RuntimeError):
        with staged_directory(other) as stage:
            (stage / "half").write_text("y")
            raise RuntimeError("crash while exporting")
    assert not other.exists()
    assert [p.name for p in other.parent.iterdir()] == ["1"]


def test_versions_published_together_are_taken_back_together(tmp_path):
    # The SavedModel is renamed first; when the ONNX version cannot follow (here another
    # process filled its folder meanwhile), the SavedModel version is taken back.
    saved, onnx = tmp_path / "serving" / "m" / "1", tmp_path / "onnx" / "m" / "1"
    with pytest.raises(OSError):
        with staged_directories(saved, onnx) as (saved_stage, onnx_stage):
            (saved_stage / "saved_model.pb").write_text("x")
            (onnx_stage / "model.onnx").write_text("y")
            onnx.mkdir()
            (onnx / "theirs").write_text("z")
    assert not saved.exists() and list(saved.parent.iterdir()) == []
    assert [p.name for p in onnx.iterdir()] == ["theirs"]
    assert [p.name for p in onnx.parent.iterdir()] == ["1"]
    with staged_directories(saved, tmp_path / "onnx" / "m" / "2") as stages:
        for stage in stages:
            (stage / "f").write_text("ok")
    assert (saved / "f").read_text() == "ok"
    assert (tmp_path / "onnx" / "m" / "2" / "f").read_text() == "ok"


def test_unknown_model_paths_are_named(tmp_path):
    with pytest.raises(ModelFormatError, match="not found"):
        load_predictor(tmp_path / "nothing")
    with pytest.raises(ModelFormatError, match="not a SavedModel"):
        load_predictor(tmp_path)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match="bad.onnx"):
        load_predictor(bad)



@pytest.mark.parametrize("size", [(32, 32), (30, 45)])
def test_serving_function_passes_pixels_through_and_pads_with_the_mean(size):
    # An identity "model" shows what the network gets: the image's own pixels bit for bit (a
    # window's output must not depend on its mean at rounding level, or predict shows seams).
    inputs = keras.Input((None, None, 3))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))
    image = np.random.default_rng(3).uniform(0.01, 0.4, (1, *size, 3)).astype(np.float32)
    out = serving_function(identity, multiple=16)(tf.constant(image))["probability"].numpy()
    np.testing.assert_array_equal(out, image)

    # A model that subtracts the window's mean sees the image's own mean only when the padding
    # (2 rows and 3 columns for 30 x 45) holds each band's mean.
    centred = keras.Model(inputs, keras.layers.Lambda(
        lambda x: x - keras.ops.mean(x, axis=(1, 2), keepdims=True))(inputs))
    out = serving_function(centred, multiple=16)(tf.constant(image))["probability"].numpy()
    np.testing.assert_allclose(out, image - image.mean(axis=(1, 2), keepdims=True), atol=2e-6)


def test_the_next_version_is_one_past_the_largest_of_serving_and_onnx(tmp_path):
    # A version lives in both bases; one that survives in only one (a half-cleaned volume)
    # is still taken. Gaps are not refilled: the next is past the largest, not the count.
    serving, onnx = tmp_path / "serving" / "tailseg", tmp_path / "onnx" / "tailseg"
    assert next_version(serving, onnx) == 1
    for base, versions in ((serving, [1, 3]), (onnx, [1, 3, 5])):
        for version in versions:
            (base / str(version)).mkdir(parents=True)
    (serving / "7.staging").mkdir()  # not a version
    assert next_version(serving, onnx) == 6
    assert next_version(onnx, serving) == 6
    (serving / "8").mkdir()
    assert next_version(serving, onnx) == 9


# --- Mixed precision ---------------------------------------------------------------------------

def _half_precision_in_saved_model(saved_model_dir: str) -> list[str]:
    """Ops of the SavedModel's graph and functions with a float16 type attribute."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(
        (Path(saved_model_dir) / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    nodes = list(graph.node) + [node for f in graph.library.function for node in f.node_def]
    return sorted({node.op for node in nodes for attr in node.attr.values()
                   if attr.type == types_pb2.DT_HALF or types_pb2.DT_HALF in attr.list.type})


def _half_precision_in_onnx(onnx_path: str) -> list[str]:
    """Nodes casting to float16 and tensors stored or typed as float16 in an ONNX model."""
    import onnx

    graph, half = onnx.load(onnx_path).graph, onnx.TensorProto.FLOAT16
    found = [node.name for node in graph.node for attr in node.attribute
             if attr.name == "to" and attr.i == half]
    found += [t.name for t in graph.initializer if t.data_type == half]
    found += [v.name for v in [*graph.input, *graph.output, *graph.value_info]
              if v.type.tensor_type.elem_type == half]
    return found


def test_a_mixed_precision_model_is_exported_in_float32_and_the_policy_restored(tmp_path):
    # Guards every training on a tensor-core GPU ("auto" turns mixed_float16 on): the trained
    # model keeps float16 layers; exported as it was, TF Serving and ONNX computed in float16,
    # differed by about 3e-3 and the 1e-4 parity check failed the export. And training left
    # the process in mixed_float16, so every model built after it was float16 too.
    from tailseg.config import TrainConfig
    from tailseg.dataset import load_chips, require_pairs
    from tailseg.export import float32_model
    from tailseg.serving.parity import check_parity
    from tailseg.train import train_model
    from tests.rasters import make_dataset

    train, _ = load_chips(require_pairs(make_dataset(tmp_path / "a", n_chips=2, seed=1)))
    val, _ = load_chips(require_pairs(make_dataset(tmp_path / "b", n_chips=1, seed=2)))
    model_config = ModelConfig(base_filters=2, depth=2, dropout=0.1)
    assert keras.mixed_precision.global_policy().name == "float32"
    result = train_model(train, val, model_config, TrainConfig(
        epochs=1, steps_per_epoch=1, batch_size=2, crop_size=32, verbose=0,
        mixed_precision="on"))
    assert keras.mixed_precision.global_policy().name == "float32", "policy not restored"
    mixed = result.model
    assert any(layer.compute_dtype == "float16" for layer in mixed.layers)

    served = float32_model(mixed)
    assert {layer.compute_dtype for layer in served.layers} == {"float32"}
    assert {layer.variable_dtype for layer in served.layers} == {"float32"}
    info = export_model(mixed, tmp_path / "exports", "tailseg", model_config.multiple)
    assert _half_precision_in_saved_model(info["saved_model"]) == []
    assert _half_precision_in_onnx(info["onnx"]) == []
    signature = tf.saved_model.load(info["saved_model"]).signatures["serving_default"]
    assert signature.structured_input_signature[1]["image"].dtype == tf.float32
    assert signature.structured_outputs["probability"].dtype == tf.float32

    x = np.random.default_rng(3).uniform(0.03, 0.4, (2, 32, 44, 3)).astype(np.float32)
    assert check_parity(info["saved_model"], info["onnx"], x) <= 1e-4
    # Same weights: the float32 copy is what is served, and close to the float16 model.
    square = x[:, :, :32]
    tf_out = load_predictor(info["saved_model"])(square)
    np.testing.assert_allclose(tf_out, served.predict(square, verbose=0), atol=1e-5)
    np.testing.assert_allclose(tf_out, mixed.predict(square, verbose=0), atol=2e-2)
