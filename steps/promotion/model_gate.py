from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.client import Client
from zenml.enums import ModelStages

from tailseg.config import RunConfig
from tailseg.gate import decide
from tailseg.workflow import evaluate_baseline


def _production_baseline(data_split: dict, config: RunConfig, threshold: float) -> dict | None:
    """The production model's metrics on this run's test split, or None if there is none."""
    model = get_step_context().model
    try:
        production = Client().get_model_version(model.name, ModelStages.PRODUCTION)
    except KeyError:
        return None
    artifact = production.get_artifact("unet_model")
    if artifact is None:
        return None
    baseline_threshold = production.run_metadata.get("test_threshold", threshold)
    return evaluate_baseline(artifact.load(), data_split, config, float(baseline_threshold))


@step(enable_cache=False)
def model_gate(test_metrics: dict, data_split: dict, config: RunConfig
               ) -> Annotated[dict, "gate_decision"]:
    """Bless or reject: absolute thresholds, then no regression against production."""
    baseline = _production_baseline(data_split, config, test_metrics["threshold"])
    decision = decide(test_metrics, config.gate, baseline).as_dict()
    log_metadata({"blessed": decision["blessed"], "gate_reasons": decision["reasons"]},
                 infer_model=True)
    return decision
