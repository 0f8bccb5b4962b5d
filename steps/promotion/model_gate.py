from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.client import Client
from zenml.enums import ModelStages

from steps.evaluation.model_evaluator import test_metadata
from tailseg.config import RunConfig
from tailseg.errors import ProductionModelError
from tailseg.gate import Comparison, decide
from tailseg.workflow import compare_with_production


def production_comparison(model_name: str, test_metrics: dict, data_split: dict,
                          config: RunConfig) -> Comparison | None:
    """Both models on the test chips neither trained on; None when nothing is in production.

    Raises:
        ProductionModelError: the production version lacks its model or its split.
    """
    try:
        production = Client().get_model_version(model_name, ModelStages.PRODUCTION)
    except KeyError:
        return None
    artifacts = {name: production.get_artifact(name) for name in ("unet_model", "data_split")}
    missing = [name for name, artifact in artifacts.items() if artifact is None]
    if missing:
        raise ProductionModelError(
            f"model {model_name!r} version {production.name!r} is in production but has no "
            f"{' or '.join(missing)} artifact, so the gate cannot compare with it; re-promote a "
            "version trained by this pipeline, or archive this one (`zenml model version update "
            f"{model_name} {production.name} --stage archived`) to release as a first model")
    if "test_threshold" not in production.run_metadata:
        # Scoring production at the candidate's threshold would judge it by a rule it never
        # chose; the README promises its own.
        raise ProductionModelError(
            f"model {model_name!r} version {production.name!r} is in production but has no "
            "test_threshold metadata (its decision threshold), so the gate cannot re-evaluate "
            "it at its own threshold; re-promote a version trained by this pipeline, or archive "
            f"this one (`zenml model version update {model_name} {production.name} --stage "
            "archived`) to release as a first model")
    threshold = float(production.run_metadata["test_threshold"])
    return compare_with_production(test_metrics, data_split, artifacts["unet_model"].load(),
                                   artifacts["data_split"].load(), threshold, config)


@step(enable_cache=False)
def model_gate(test_metrics: dict, data_split: dict, config: RunConfig
               ) -> Annotated[dict, "gate_decision"]:
    """Bless or reject: absolute thresholds, then no regression against production."""
    comparison = production_comparison(get_step_context().model.name, test_metrics, data_split,
                                       config)
    decision = decide(test_metrics, config.gate, comparison).as_dict()
    compared = {} if comparison is None else {"gate_compared_chips": len(comparison.chip_ids)}
    log_metadata({**test_metadata(test_metrics), "blessed": decision["blessed"],
                  "gate_reasons": decision["reasons"], **compared}, infer_model=True)
    return decision
