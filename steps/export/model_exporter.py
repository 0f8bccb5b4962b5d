from pathlib import Path
from typing import Annotated

import keras
from zenml import get_step_context, log_metadata, step
from zenml.io import fileio
from zenml.types import MarkdownString
from zenml.utils import io_utils

from tailseg.config import RunConfig
from tailseg.delivery import previous_export, record_export, repository_targets
from tailseg.errors import ExportError
from tailseg.publish import MODEL_CARD, publish_model


def repository_versions(repository_uri: str, model_name: str) -> list[int]:
    """The integer versions under <repository_uri>/serving/<name> and /onnx/<name> (ZenML's
    fileio: s3, gs, az or a local path). A pod's export_dir starts empty every run, so the next
    version must also be past these, or every export would be version 1."""
    versions = []
    for kind in ("serving", "onnx"):
        base = f"{repository_uri.rstrip('/')}/{kind}/{model_name}"
        if fileio.exists(base):
            versions += [int(name) for name in map(str, fileio.listdir(base)) if name.isdigit()]
    return sorted(versions)


def copy_to_repository(targets: dict[str, str]) -> None:
    """Copy a new version's folders to the repository; a version there is never overwritten.

    Raises:
        ExportError: a target exists already (another run took the number meanwhile);
            nothing is copied.
    """
    existing = [target for target in targets.values() if fileio.exists(target)]
    if existing:
        raise ExportError(f"{', '.join(existing)}: already in the model repository; a version "
                          "is never overwritten, so nothing was copied (rerun to export the "
                          "next free version)")
    for source, target in targets.items():
        io_utils.copy_dir(source, target, overwrite=False)


@step(enable_cache=False)
def model_exporter(unet_model: keras.Model, test_metrics: dict, gate_decision: dict,
                   data_split: dict, training_history: dict, config: RunConfig) -> tuple[
    Annotated[dict, "export_info"],
    Annotated[MarkdownString, "model_card"],
]:
    """Export a blessed model (SavedModel for TF Serving + ONNX); a rejected one touches
    nothing, and a model already on the volume (a cached trainer) is not exported twice."""
    context = get_step_context()
    receipt = f"unet_model-{context.inputs['unet_model'][0].id}"
    previous = previous_export(config.export.export_dir, receipt)
    if gate_decision["blessed"] and previous is not None:
        card = Path(previous["saved_model"], "assets.extra", MODEL_CARD)
        info = {**previous, "reused": True}
        log_metadata({"exported": True, "reused_version": str(previous["version"])},
                     infer_model=True)
        return info, MarkdownString(card.read_text() if card.is_file() else "")
    repository = config.export.repository_uri  # e.g. a Kubeflow pod, whose disk goes away
    taken = repository_versions(repository, config.export.model_name) if repository else ()
    info, card = publish_model(unet_model, config, data_split, test_metrics, gate_decision,
                               training_history, zenml_version=str(context.model.number),
                               taken_versions=tuple(taken))
    if info["exported"]:
        if repository:
            targets = repository_targets(info, config.export.export_dir, repository)
            copy_to_repository(targets)
            info["repository"] = targets
        record_export(config.export.export_dir, receipt, info)
    log_metadata({"exported": info["exported"], **{k: str(v) for k, v in info.items()}},
                 infer_model=True)
    return info, MarkdownString(card)
