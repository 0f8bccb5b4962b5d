from typing import Annotated

import keras
from zenml import step

from steps.materializers import PNGImageMaterializer
from tailseg.config import RunConfig
from tailseg.plots import PNGImage
from tailseg.workflow import run_evaluation


def test_metadata(metrics: dict) -> dict:
    """The model version's test_* metadata (test_threshold is what the gate re-scores
    production at). Logged by a step that always runs: ZenML 0.98 copies only step-run
    metadata to a cached step's run (sql_zen_store), not the model version's, so a cached
    evaluator would leave the new version without it."""
    return ({f"test_{k}": metrics[k] for k in ("iou", "f1", "precision", "recall", "accuracy",
                                                "threshold")}
            | {f"test_{k}": v for k, v in metrics["sites"].items()
               if isinstance(v, int | float) and not isinstance(v, bool)})


@step(output_materializers={"precision_recall_curve": PNGImageMaterializer,
                            "best_test_chips": PNGImageMaterializer,
                            "worst_test_chips": PNGImageMaterializer})
def model_evaluator(unet_model: keras.Model, data_split: dict, config: RunConfig) -> tuple[
    Annotated[dict, "test_metrics"],
    Annotated[PNGImage, "precision_recall_curve"],
    Annotated[PNGImage, "best_test_chips"],
    Annotated[PNGImage, "worst_test_chips"],
]:
    """Score the held-out test split at the threshold chosen on validation. The scores reach
    the model version's metadata through model_gate (test_metadata), which is never cached."""
    metrics, figures = run_evaluation(unet_model, data_split, config)
    return (metrics, figures["precision_recall_curve"], figures["best_test_chips"],
            figures["worst_test_chips"])
