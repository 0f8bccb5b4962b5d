"""export_for_serving: TF Serving layout, warm-up records, models.config with labels, ONNX
parity, infra validation in a separate process, atomic publication; then serving the
models.config with its labels."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from tailseg.backends import load_onnx, load_tf
from tailseg.config import ModelConfig
from tailseg.errors import ConfigError, ExportError, InfraValidationError, ParityError
from tailseg.model import build_unet
from tailseg.serving.client import GrpcClient, RestClient
from tailseg.serving.infra_validate import run_infra_validation
from tailseg.serving.model_config import read_model_config
from tailseg.serving.package import export_for_serving
from tailseg.serving.parity import check_parity
from tailseg.serving.process import launch_server
from tailseg.serving.warmup import warmup_path


def tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_unet(ModelConfig(base_filters=2, depth=2, dropout=0), np.full(3, .1),
                      np.full(3, .05))


@pytest.fixture(scope="module")
def samples():
    return np.random.default_rng(0).uniform(.02, .3, (3, 24, 36, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, samples):
    """Version 1 (stable), then version 2 of a differently seeded model as canary."""
    export_dir = tmp_path_factory.mktemp("extras") / "exports"
    with pytest.MonkeyPatch.context() as patch:  # the allocator setting must come from tailseg
        patch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
        first = export_for_serving(tiny_model(1), export_dir, "tailseg", 4, samples,
                                   warmup_records=2, metadata={"threshold": 0.4})
    second = export_for_serving(tiny_model(2), export_dir, "tailseg", 4, samples, canary=True)
    return export_dir, first, second


def test_layout_warmup_and_metadata(exports, samples):
    export_dir, first, second = exports
    assert (first["version"], second["version"]) == (1, 2)
    base = export_dir / "serving" / "tailseg"
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no staging leftovers
    assert sorted(p.name for p in (export_dir / "onnx" / "tailseg").iterdir()) == ["1", "2"]
    records = [prediction_log_pb2.PredictionLog.FromString(r) for r in
               __import__("tensorflow").data.TFRecordDataset(
                   str(warmup_path(base / "1"))).as_numpy_iterator()]
    # warmup_records=2 float requests, plus one through serving_bytes for its graph
    assert len(records) == 3
    request = records[0].predict_log.request
    assert request.model_spec.name == "tailseg"
    assert request.model_spec.signature_name == "serving_default"
    assert [d.size for d in request.inputs["image"].tensor_shape.dim] == [1, 24, 36, 3]
    raw = records[2].predict_log.request
    assert raw.model_spec.signature_name == "serving_bytes"
    assert [len(b) for b in raw.inputs["image_bytes"].string_val] == [24 * 36 * 3 * 4]
    assert load_tf(base / "1").metadata["threshold"] == 0.4
    assert load_tf(base / "2").metadata["onnx_opset"] == 17
    assert first["infra_validation"]["ok"] and first["infra_validation"]["warmup_requests"] == 3
    # The validating process runs with tailseg's allocator, as the server it stands for.
    assert first["infra_validation"]["tensorflow_env"] == {"TF_CPU_ALLOCATOR_USE_BFC": "true"}


def test_models_config_lists_stable_and_canary(exports):
    export_dir, first, second = exports
    assert first["labels"] == {"stable": 1}
    assert second["labels"] == {"stable": 1, "canary": 2}
    text = (export_dir / "serving" / "models.config").read_text()
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert entry.name == "tailseg" and entry.model_platform == "tensorflow"
    assert entry.base_path == str(export_dir / "serving" / "tailseg")
    assert list(entry.model_version_policy.specific.versions) == [1, 2]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    assert read_model_config(export_dir / "serving" / "models.config")[0].labels == \
        {"stable": 1, "canary": 2}


def test_parity_is_measured_and_mismatches_are_caught(exports, samples):
    export_dir, first, second = exports
    assert 0 <= first["parity_max_abs_diff"] <= 1e-4
    tf_probability = load_tf(first["saved_model"])(samples)
    onnx_probability = load_onnx(first["onnx"])(samples)
    assert np.abs(tf_probability - onnx_probability).max() <= 1e-4
    # Version 2 has other weights: its ONNX is not version 1's model.
    with pytest.raises(ParityError, match="max \\|difference\\|"):
        check_parity(first["saved_model"], second["onnx"], samples)


def test_infra_validation_rejects_a_broken_warmup_file(exports, tmp_path):
    export_dir, first, _ = exports
    broken = tmp_path / "1"
    shutil.copytree(first["saved_model"], broken)
    warmup_path(broken).write_bytes(b"not a TFRecord")
    with pytest.raises(InfraValidationError, match="not a TFRecord of PredictionLog"):
        run_infra_validation(broken, "tailseg")


def test_a_failed_export_publishes_nothing(exports, samples):
    export_dir, _, _ = exports
    config_before = (export_dir / "serving" / "models.config").read_text()
    poisoned = samples.copy()
    # Finite (the request check passes) but it overflows the normalisation: both runtimes output
    # non-finite values, so parity cannot be shown.
    poisoned[0, 0, 0, 0] = 3e38
    with pytest.raises(ParityError, match="non-finite"):
        export_for_serving(tiny_model(3), export_dir, "tailseg", 4, poisoned)
    for kind in ("serving", "onnx"):
        assert sorted(p.name for p in (export_dir / kind / "tailseg").iterdir()) == ["1", "2"]
    assert (export_dir / "serving" / "models.config").read_text() == config_before


def test_an_unreadable_models_config_stops_the_export_before_anything_is_published(
        exports, samples):
    # A hand-edited models.config that does not parse is found before the versions are
    # renamed into place, not after (which would leave a published version beside a failure).
    export_dir, _, _ = exports
    config = export_dir / "serving" / "models.config"
    config_before = config.read_text()
    config.write_text("model_config_list { config { nme: 'x' } }")
    try:
        with pytest.raises(ConfigError, match="models.config: not a readable"):
            export_for_serving(tiny_model(3), export_dir, "tailseg", 4, samples)
        for kind in ("serving", "onnx"):
            assert sorted(p.name for p in (export_dir / kind / "tailseg").iterdir()) == ["1", "2"]
        assert config.read_text() == "model_config_list { config { nme: 'x' } }"
    finally:
        config.write_text(config_before)


def test_versions_are_taken_back_when_models_config_cannot_be_written(exports, samples):
    # The versions are renamed into place before models.config is written; if that write
    # fails (here: a folder where the file should be), the new versions go too.
    export_dir, _, _ = exports
    config = export_dir / "serving" / "models.config"
    config_before = config.read_text()
    config.unlink()
    config.mkdir()
    try:
        with pytest.raises(ExportError, match=r"models.config: writing it failed .*version 3 "
                                              r"was taken back, nothing is published"):
            export_for_serving(tiny_model(3), export_dir, "tailseg", 4, samples)
        for kind in ("serving", "onnx"):
            assert sorted(p.name for p in (export_dir / kind / "tailseg").iterdir()) == ["1", "2"]
        assert not [p for p in config.parent.iterdir() if p.name.startswith(".models.config")]
    finally:
        config.rmdir()
        config.write_text(config_before)


def test_bad_models_config_names_the_file(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { name: 'x' base_path: '/m' version_labels "
                    "{ key: 'stable' value: 3 } model_version_policy { specific { versions: 1 }"
                    " } } }")
    with pytest.raises(ConfigError, match="models.config.*outside the specific policy"):
        read_model_config(path)
    path.write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ConfigError, match="not a readable ModelServerConfig"):
        read_model_config(path)


def test_serving_the_models_config_answers_by_label(exports, samples, tmp_path):
    export_dir, first, second = exports
    config = export_dir / "serving" / "models.config"
    # As tensorflow_model_server, labels in the file at start-up need the flag.
    with launch_server(["--model-config-file", str(config),
                        "--allow_version_labels_for_unavailable_models=true"], tmp_path) as server:
        for label, export in (("stable", first), ("canary", second)):
            expected = load_tf(export["saved_model"])(samples)
            client = GrpcClient(server.grpc_target, "tailseg", label=label)
            np.testing.assert_allclose(client.predict(samples), expected, atol=1e-6)
            # The metadata request resolves the label (the status request reads none).
            metadata = RestClient(server.rest_url, "tailseg", label=label).metadata()
            assert metadata["model_spec"]["version"] == str(export["version"])
