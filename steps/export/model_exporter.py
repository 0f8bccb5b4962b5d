from typing import Annotated

import keras
from zenml import get_step_context, log_metadata, step
from zenml.types import MarkdownString

from tailseg.config import RunConfig
from tailseg.publish import publish_model


@step(enable_cache=False)
def model_exporter(unet_model: keras.Model, test_metrics: dict, gate_decision: dict,
                   data_split: dict, training_history: dict, config: RunConfig) -> tuple[
    Annotated[dict, "export_info"],
    Annotated[MarkdownString, "model_card"],
]:
    """Export a blessed model (SavedModel for TF Serving + ONNX); a rejected one touches
    nothing."""
    model_version = get_step_context().model
    info, card = publish_model(unet_model, config, data_split, test_metrics, gate_decision,
                               training_history, zenml_version=str(model_version.number))
    log_metadata({"exported": info["exported"], **{k: str(v) for k, v in info.items()}},
                 infer_model=True)
    return info, MarkdownString(card)
