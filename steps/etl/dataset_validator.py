from typing import Annotated

from zenml import log_metadata, step
from zenml.client import Client
from zenml.types import HTMLString

from tailseg.config import RunConfig
from tailseg.validation import raise_if_unusable, validate_dataset


def _previous_band_statistics() -> dict | None:
    """Band statistics of the last validated run, for the drift check (None on the first)."""
    try:
        return Client().get_artifact_version("band_statistics").load()
    except (KeyError, RuntimeError):
        return None


@step(enable_cache=False)
def dataset_validator(config: RunConfig) -> tuple[
    Annotated[list[str], "valid_chip_ids"],
    Annotated[dict, "validation_report"],
    Annotated[HTMLString, "data_docs"],
    Annotated[dict, "band_statistics"],
]:
    """Validate every chip with Great Expectations; quarantine invalid ones or stop the run."""
    result = validate_dataset(config.data.data_dir, config.validation, config.data.convention,
                              previous_stats=_previous_band_statistics())
    log_metadata({"valid_chips": len(result.valid_ids),
                  "quarantined": sorted(result.quarantined)})
    raise_if_unusable(result)
    return result.valid_ids, result.report, HTMLString(result.html), result.band_stats
