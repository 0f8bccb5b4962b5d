from typing import Annotated

import keras
from zenml import log_metadata, step

from steps.materializers import PNGImageMaterializer
from tailseg.config import RunConfig
from tailseg.plots import PNGImage
from tailseg.workflow import run_evaluation


@step(output_materializers={"precision_recall_curve": PNGImageMaterializer,
                            "best_test_chips": PNGImageMaterializer,
                            "worst_test_chips": PNGImageMaterializer})
def model_evaluator(unet_model: keras.Model, data_split: dict, config: RunConfig) -> tuple[
    Annotated[dict, "test_metrics"],
    Annotated[PNGImage, "precision_recall_curve"],
    Annotated[PNGImage, "best_test_chips"],
    Annotated[PNGImage, "worst_test_chips"],
]:
    """Score the held-out test split at the threshold chosen on validation."""
    metrics, figures = run_evaluation(unet_model, data_split, config)
    log_metadata({f"test_{k}": metrics[k] for k in ("iou", "f1", "precision", "recall",
                                                     "accuracy", "threshold")}
                 | {f"test_{k}": v for k, v in metrics["sites"].items()
                    if isinstance(v, int | float) and not isinstance(v, bool)},
                 infer_model=True)
    return (metrics, figures["precision_recall_curve"], figures["best_test_chips"],
            figures["worst_test_chips"])
