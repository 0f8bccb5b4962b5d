from typing import Annotated

from zenml import log_metadata, step

from tailseg.config import RunConfig
from tailseg.workflow import make_split


@step
def data_splitter(valid_chip_ids: list[str], config: RunConfig) -> Annotated[dict, "data_split"]:
    """Seeded train/validation/test split of the valid chips, recorded as an artifact."""
    split = make_split(valid_chip_ids, config)
    log_metadata({part: len(split[part]) for part in ("train", "val", "test")})
    return split
