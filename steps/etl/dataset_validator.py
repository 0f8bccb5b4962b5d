import hashlib
from pathlib import Path
from typing import Annotated

from zenml import log_metadata, step
from zenml.client import Client
from zenml.types import HTMLString

from tailseg.config import RunConfig
from tailseg.validation import raise_if_unusable, validate_dataset

BAND_STATISTICS = "band_statistics"


def dataset_key(data_dir: str | Path) -> str:
    """A short, stable id of a dataset folder (its resolved path), kept as artifact metadata."""
    return hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]


def previous_band_statistics(data_dir: str | Path) -> dict | None:
    """Band statistics of this dataset's last validated run, for the drift check (None on its
    first run). Statistics of other datasets are never used."""
    versions = Client().list_artifact_versions(
        artifact=BAND_STATISTICS, run_metadata=[f"dataset_key:contains:{dataset_key(data_dir)}"],
        sort_by="desc:created", size=1)
    return versions.items[0].load() if versions.items else None


@step(enable_cache=False)
def dataset_validator(config: RunConfig) -> tuple[
    Annotated[list[str], "valid_chip_ids"],
    Annotated[dict, "validation_report"],
    Annotated[HTMLString, "data_docs"],
    Annotated[dict, "band_statistics"],
]:
    """Validate every chip with Great Expectations; quarantine invalid ones or stop the run."""
    data_dir = config.data.data_dir
    result = validate_dataset(data_dir, config.validation, config.data.convention,
                              previous_stats=previous_band_statistics(data_dir))
    log_metadata({"valid_chips": len(result.valid_ids),
                  "quarantined": sorted(result.quarantined)})
    log_metadata({"dataset_key": dataset_key(data_dir), "data_dir": str(data_dir)},
                 artifact_name=BAND_STATISTICS, infer_artifact=True)
    raise_if_unusable(result)
    return result.valid_ids, result.report, HTMLString(result.html), result.band_stats
