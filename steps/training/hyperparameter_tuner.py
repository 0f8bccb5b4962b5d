from typing import Annotated

from zenml import log_metadata, step

from tailseg.config import RunConfig
from tailseg.workflow import run_tuning


@step
def hyperparameter_tuner(data_split: dict, config: RunConfig
                         ) -> Annotated[dict, "best_hyperparameters"]:
    """Optuna search over learning rate, batch size, loss and filters (or the configured
    values when tuning is off)."""
    result = run_tuning(data_split, config)
    log_metadata({"tuned": result["tuned"], **result["best_params"]})
    return result
