from typing import Annotated

from zenml import get_step_context, log_metadata, step

from tailseg.config import RunConfig


@step(enable_cache=False)
def model_promoter(gate_decision: dict, export_info: dict, config: RunConfig
                   ) -> Annotated[str, "model_stage"]:
    """Move a blessed, exported model version to the configured stage."""
    if not (gate_decision["blessed"] and export_info["exported"]):
        return "none"
    model = get_step_context().model
    model.set_stage(config.gate.promote_to, force=True)
    log_metadata({"promoted_to": config.gate.promote_to}, infer_model=True)
    return config.gate.promote_to
