from pathlib import Path
from typing import Annotated

import keras
from zenml import get_step_context, log_metadata, step
from zenml.types import MarkdownString
from zenml.utils import io_utils

from tailseg.config import RunConfig
from tailseg.delivery import previous_export, record_export, repository_targets
from tailseg.publish import MODEL_CARD, publish_model


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
    info, card = publish_model(unet_model, config, data_split, test_metrics, gate_decision,
                               training_history, zenml_version=str(context.model.number))
    if info["exported"]:
        if config.export.repository_uri:  # e.g. a Kubeflow pod, whose disk goes away
            targets = repository_targets(info, config.export.export_dir,
                                         config.export.repository_uri)
            for source, target in targets.items():
                io_utils.copy_dir(source, target, overwrite=True)
            info["repository"] = targets
        record_export(config.export.export_dir, receipt, info)
    log_metadata({"exported": info["exported"], **{k: str(v) for k, v in info.items()}},
                 infer_model=True)
    return info, MarkdownString(card)
