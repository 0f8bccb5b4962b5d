from typing import Annotated

import keras
from zenml import log_metadata, step

from steps.materializers import KerasModelMaterializer, PNGImageMaterializer
from tailseg.config import RunConfig
from tailseg.plots import PNGImage
from tailseg.workflow import run_training


@step(output_materializers={"unet_model": KerasModelMaterializer,
                            "training_curves": PNGImageMaterializer})
def model_trainer(data_split: dict, best_hyperparameters: dict, config: RunConfig) -> tuple[
    Annotated[keras.Model, "unet_model"],
    Annotated[dict, "training_history"],
    Annotated[PNGImage, "training_curves"],
]:
    """Train the U-Net (GPU when present) and keep the best validation-IoU weights."""
    model, history, curves = run_training(data_split, best_hyperparameters, config)
    log_metadata({"best_epoch": history["best_epoch"], "epochs_run": history["epochs_run"],
                  "planned_epochs": history["planned_epochs"],
                  "stop_reason": history["stop_reason"],
                  "schedule_completed": history["schedule_completed"],
                  "train_seconds": history["seconds"],
                  "chips_per_second": history["chips_per_second"],
                  "best_val_iou": ([m["kept_val_iou"] for m in history["member_schedules"]]
                                   if "member_schedules" in history
                                   else max(history["history"]["val_iou"])),
                  "members": history.get("members", 1)})
    return model, history, curves
