"""The train/validation/test split: a pure function of each chip's id and the seed.

Each chip id is hashed with the seed (SHA-256 of "<seed>:<chip id>") to a number u in [0, 1);
u < test_fraction puts the chip in test, u < test_fraction + val_fraction in validation, the rest
in train. A chip's part therefore never depends on which other chips exist: adding or removing
chips never moves an existing chip between parts, so a retrained model and the production model
see the same held-out chips (unlike a seeded permutation of the sorted ids, where one new chip
reshuffles everything). Part sizes follow the fractions only on average.

Chips that share ground (tailseg.overlaps) form a group, hashed by its key (its smallest chip
id): a whole group lands in one part, so no test or validation pixel is a training pixel too. A
chip alone is its own group, so its part is what the plain rule gives it; only a new chip that
overlaps existing ones can move them (into the part of their joint group).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from tailseg.config import DataConfig
from tailseg.errors import SplitError
from tailseg.overlaps import group_members

Part = Literal["train", "val", "test"]
PARTS: tuple[Part, ...] = ("train", "val", "test")
METHOD = ("sha256(seed:group key) in [0, 1): test < test_fraction <= val < test+val_fraction <= "
          "train; a group is the chips that share ground, keyed by its smallest chip id")


def unit_hash(chip_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the chip id and the seed alone."""
    digest = hashlib.sha256(f"{seed}:{chip_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(chip_id: str, config: DataConfig) -> Part:
    """The part of one chip."""
    u = unit_hash(chip_id, config.seed)
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


def split_ids(chip_ids: list[str], config: DataConfig, source: str = "dataset",
              groups: dict[str, str] | None = None) -> dict[str, list[str]]:
    """{"train", "val", "test"}: sorted chip ids per part.

    Args:
        groups: {chip id: group key} (tailseg.overlaps.overlap_groups); chips not in it, or
            all chips when None, are groups of their own.

    Raises:
        SplitError: a part would be empty (too few chips for the fractions and seed); the
            message gives the counts and the fix. Raised before any training starts.
    """
    parts: dict[str, list[str]] = {part: [] for part in PARTS}
    for chip_id in sorted(set(chip_ids)):
        parts[assign((groups or {}).get(chip_id, chip_id), config)].append(chip_id)
    empty = [part for part in PARTS if not parts[part]]
    if empty:
        counts = ", ".join(f"{part} {len(parts[part])}" for part in PARTS)
        raise SplitError(
            f"{source}: the split of {len(set(chip_ids))} chips leaves no {' and no '.join(empty)}"
            f" chip ({counts}; seed {config.seed}, val_fraction {config.val_fraction}, "
            f"test_fraction {config.test_fraction}); add chips or change the fractions or seed")
    return parts


def split_record(chip_ids: list[str], config: DataConfig, source: str = "dataset",
                 groups: dict[str, str] | None = None) -> dict:
    """The split as recorded with a run (and printed by `tailseg split`): ids per part plus
    everything that produced them (the groups of more than one chip included)."""
    shared = group_members(chip_ids, groups)
    return {**split_ids(chip_ids, config, source, groups), "seed": config.seed,
            "val_fraction": config.val_fraction, "test_fraction": config.test_fraction,
            "method": METHOD,
            "groups": {key: ids for key, ids in sorted(shared.items()) if len(ids) > 1}}
