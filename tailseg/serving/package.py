"""export_for_serving: one atomic, validated TF Serving + ONNX release of a trained model.

Everything happens in staging directories beside the final ones: SavedModel, warm-up requests,
ONNX, TF/ONNX parity on the sample images, infra validation in a separate process, and the
new models.config (an existing one read and checked). Only when all pass are the versions
renamed into place and models.config (re)written with its labels: read again then, so a
promotion or another model's entry written while this export validated is kept, not undone. A
failure at any point publishes nothing: if models.config cannot be written, the versions just
renamed into place are taken back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np

from tailseg.errors import ExportError
from tailseg.export import export_model
from tailseg.serving.infra_validate import run_infra_validation
from tailseg.serving.model_config import (
    CONFIG_FILE,
    labelled_sources,
    read_model_config,
    write_model_config,
)
from tailseg.serving.parity import check_parity
from tailseg.serving.protocol import check_image
from tailseg.serving.warmup import write_warmup_file


def _labels(config_path: Path, model_name: str, serving_base: Path, version: int,
            canary: bool) -> tuple[int, int | None]:
    """(stable, canary): the new version is stable, or canary beside the current stable."""
    if not canary:
        return version, None
    sources = read_model_config(config_path) if config_path.is_file() else []
    stable = next((s.labels.get("stable") for s in sources if s.name == model_name), None)
    if stable is None or not (serving_base / str(stable)).is_dir():
        return version, None  # nothing to be a canary against: the first release is stable
    return stable, version


def export_for_serving(model: keras.Model, export_dir: str | Path, model_name: str,
                       multiple: int, sample_images: np.ndarray, opset: int = 17,
                       metadata: dict | None = None, parity_tolerance: float = 1e-4,
                       warmup_records: int = 4, canary: bool = False,
                       extra_assets: dict[str, str] | None = None,
                       serving_base_path: str | None = None,
                       version: int | None = None) -> dict:
    """Export, validate and publish a new version under export_dir.

    Args:
        version: passed to export_model: the version the caller named, refused unless free.
        sample_images: float32 reflectance [N, H, W, 3], real chips: the warm-up requests (the
            first warmup_records of them) and the parity check (all of them).
        canary: label the new version "canary" and keep the current "stable"; otherwise the
            new version becomes "stable" and any canary is dropped.
        serving_base_path: base_path written to models.config (e.g. "/models/tailseg" inside
            the serving container); default the local absolute path.

    Returns:
        {"version", "saved_model", "onnx", "models_config", "labels", "parity_max_abs_diff",
        "infra_validation", "opset"}.

    Raises:
        ParityError: TF and ONNX Runtime differ by more than parity_tolerance.
        InfraValidationError: the version does not load or answer in a fresh process.
    """
    images = check_image(np.asarray(sample_images, np.float32), "sample_images")
    export_root = Path(export_dir).resolve()
    serving_base = export_root / "serving" / model_name
    config_path = export_root / "serving" / CONFIG_FILE

    def release_sources(version: int):
        stable, canary_version = _labels(config_path, model_name, serving_base, version, canary)
        labels = {"stable": stable} | ({"canary": canary_version} if canary_version else {})
        return labelled_sources(config_path, model_name, serving_base_path or serving_base,
                                stable, canary_version), labels

    def validate(saved_model: Path, onnx_path: Path, version: int) -> dict:
        # models.config first: a hand-edited file that does not parse stops the export cheaply.
        release_sources(version)
        write_warmup_file(saved_model, images, model_name, min(warmup_records, len(images)))
        difference = check_parity(saved_model, onnx_path, images, parity_tolerance)
        return {"parity_max_abs_diff": difference,
                "infra_validation": run_infra_validation(saved_model, model_name)}

    info = export_model(model, export_root, model_name, multiple, opset, metadata, extra_assets,
                        before_publish=validate, version=version)
    try:
        sources, labels = release_sources(info["version"])  # as the file is now
        write_model_config(config_path, sources)
    except OSError as error:
        _withdraw(info)
        raise ExportError(f"{config_path}: writing it failed ({error.strerror or error}); "
                          f"version {info['version']} was taken back, nothing is published. "
                          "Fix the file or its folder, then export again") from error
    except BaseException:
        _withdraw(info)
        raise
    return {**info, "models_config": str(config_path), "labels": labels, "opset": opset}


def _withdraw(info: dict) -> None:
    """Take back a version export_model published: no models.config names it yet."""
    shutil.rmtree(info["saved_model"], ignore_errors=True)
    shutil.rmtree(Path(info["onnx"]).parent, ignore_errors=True)
