"""The batch-inference pipeline: one whole scene in, GIS-ready tailings layers out."""

from zenml import pipeline

from steps.inference.scene_predictor import scene_predictor
from tailseg.config import PredictConfig


@pipeline(name="batch_inference", enable_cache=False)
def batch_inference(scene_path: str, model_path: str, out_dir: str, backend: str | None = None,
                    config: PredictConfig | None = None) -> None:
    scene_predictor(scene_path, model_path, out_dir, backend, config)
