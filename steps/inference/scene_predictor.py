from typing import Annotated

from zenml import log_metadata, step

from tailseg.config import PredictConfig
from tailseg.predict import run_prediction


@step(enable_cache=False)
def scene_predictor(scene_path: str, model_path: str, out_dir: str, backend: str | None = None,
                    config: PredictConfig | None = None) -> tuple[
    Annotated[dict, "prediction_outputs"],
    Annotated[int, "n_sites"],
]:
    """Predict one whole scene: probability and mask COGs and the tailings-site GeoJSON."""
    config = (config or PredictConfig()).model_copy(update={"progress": False})
    result = run_prediction(scene_path, model_path, out_dir, backend, config)
    log_metadata({k: v for k, v in result.to_dict().items() if k != "outputs"})
    return result.outputs, result.n_sites
