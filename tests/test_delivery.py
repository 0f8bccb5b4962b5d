"""Model delivery: the exporter's receipts (a cached model is not exported twice, a wiped
volume is refilled), the layout a version keeps in the object-storage model repository, and
`tailseg promote`, which pins what production serves (forward, or back for a rollback)."""

from pathlib import Path

import pytest

from tailseg.delivery import (
    previous_export,
    receipt_path,
    record_export,
    repository_targets,
)

ROOT = Path(__file__).resolve().parent.parent


def _export(root, version: int) -> dict:
    saved = root / "serving" / "tailseg" / str(version)
    saved.mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    onnx = root / "onnx" / "tailseg" / str(version)
    onnx.mkdir(parents=True)
    (onnx / "model.onnx").write_bytes(b"onnx")
    return {"exported": True, "version": version, "saved_model": str(saved),
            "onnx": str(onnx / "model.onnx")}


def test_a_recorded_model_is_not_exported_again_until_its_version_is_gone(tmp_path):
    info = _export(tmp_path, 3)
    assert previous_export(tmp_path, "unet_model-abc") is None
    path = record_export(tmp_path, "unet_model-abc", info)
    # Receipts stay outside serving/<name>/, where TF Serving reads integer versions.
    assert path.parent == tmp_path / "receipts"
    assert previous_export(tmp_path, "unet_model-abc") == info
    assert previous_export(tmp_path, "unet_model-other") is None
    (tmp_path / "serving" / "tailseg" / "3" / "saved_model.pb").unlink()  # volume wiped
    assert previous_export(tmp_path, "unet_model-abc") is None


def test_receipt_keys_cannot_escape_the_folder(tmp_path):
    with pytest.raises(ValueError, match="letters, digits"):
        receipt_path(tmp_path, "../serving/tailseg/1")


def test_repository_keeps_the_export_layout(tmp_path):
    info = _export(tmp_path, 7)
    targets = repository_targets(info, tmp_path, "s3://bucket/model-repository/")
    assert targets == {
        info["saved_model"]: "s3://bucket/model-repository/serving/tailseg/7",
        str(tmp_path / "onnx" / "tailseg" / "7"): "s3://bucket/model-repository/onnx/tailseg/7"}


def test_promote_pins_the_version_and_rollback_moves_stable_back(tmp_path, capsys):
    import json
    import shutil

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from tailseg.cli import main
    from tailseg.delivery import promote_version
    from tailseg.errors import ConfigError

    config = tmp_path / "models.config"
    shutil.copy(ROOT / "infra/k8s/overlays/production/models.config", config)
    repository = tmp_path / "repo"
    _export(repository, 1)
    _export(repository, 2)

    assert main(["promote", "2", "--models-config", str(config), "--repository",
                 str(repository)]) == 0
    assert json.loads(capsys.readouterr().out) == {"models_config": str(config), "stable": 2,
                                                   "previous": 1}
    parsed = text_format.Parse(config.read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = parsed.model_config_list.config
    assert list(model.model_version_policy.specific.versions) == [2]
    assert dict(model.version_labels) == {"stable": 2}
    assert config.read_text().startswith("# Production serves one explicit version")
    assert promote_version(config, "tailseg", 1) == 2  # rollback
    # A version that was never exported is refused, and nothing changes.
    before = config.read_text()
    assert main(["promote", "7", "--models-config", str(config), "--repository",
                 str(repository)]) == 2
    assert "version 7 was never exported" in capsys.readouterr().err
    assert config.read_text() == before
    with pytest.raises(ConfigError, match="no model named 'other'"):
        promote_version(config, "other", 1)


def test_promote_replaces_the_config_in_one_rename_and_keeps_its_permissions(tmp_path):
    # A server polling models.config never reads half of it: a reader that opened the file
    # before the promotion still reads the old content whole, and the mode is unchanged.
    import os
    import shutil

    from tailseg.delivery import promote_version
    from tailseg.errors import ConfigError

    config = tmp_path / "models.config"
    shutil.copy(ROOT / "infra/k8s/overlays/production/models.config", config)
    config.chmod(0o644)
    before = config.read_text()
    with config.open() as reader:
        promote_version(config, "tailseg", 5)
        assert reader.read() == before
    assert "versions: 5" in config.read_text()
    assert oct(config.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]  # no temporary left
    config.write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(ConfigError, match="models.config: not a readable ModelServerConfig"):
        promote_version(config, "tailseg", 5)
    os.chmod(config, 0o600)
    config.write_text(before)
    promote_version(config, "tailseg", 6)
    assert oct(config.stat().st_mode & 0o777) == oct(0o600)


def test_a_new_atomically_written_file_gets_the_umask_mode_not_mkstemps(tmp_path):
    import os

    from tailseg.textfile import write_atomically

    umask = os.umask(0o022)
    try:
        path = write_atomically(tmp_path / "sub" / "models.config", "x")
    finally:
        os.umask(umask)
    assert path.read_text() == "x"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
