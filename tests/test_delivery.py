"""The exporter's receipts (a cached model is not exported twice, a wiped volume is refilled)
and the layout a version keeps in the object-storage model repository."""

import pytest

from tailseg.delivery import (
    previous_export,
    receipt_path,
    record_export,
    repository_targets,
)


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
