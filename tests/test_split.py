"""The split is a pure function of each chip id and the seed: adding or removing chips never
moves an existing chip, the fractions hold on average, and a split without training,
validation or test chips is refused before training."""

import json

import numpy as np
import pytest

from tailseg.cli import main
from tailseg.config import DataConfig
from tailseg.errors import SplitError
from tailseg.split import METHOD, assign, split_ids, split_record, unit_hash
from tests.rasters import synthetic_chip, write_image, write_mask

IDS = [f"chip_{i:04d}" for i in range(4000)]

# The bundled data's test chips under the default seed and fractions. Reported metrics refer to
# these chips: a change of the hash or of its boundaries changes them and fails here.
# The bundled test chips by group (seed 42): no test chip shares ground with a training chip.
BUNDLED_TEST = ["chip_010", "chip_019", "chip_020", "chip_021", "chip_041", "chip_042",
                "chip_051", "chip_084", "chip_085", "chip_108"]


def _where(split: dict) -> dict[str, str]:
    return {chip: part for part in ("train", "val", "test") for chip in split[part]}


def test_adding_or_removing_chips_never_moves_an_existing_chip():
    config = DataConfig()
    base = _where(split_ids(IDS[:1000], config))
    grown = _where(split_ids(IDS[:1000] + [f"new_{i}" for i in range(300)], config))
    shrunk = _where(split_ids(IDS[200:1000], config))
    assert all(grown[chip] == part for chip, part in base.items())
    assert all(base[chip] == part for chip, part in shrunk.items())


def test_split_is_complete_disjoint_order_free_and_seeded():
    config = DataConfig(seed=7)
    first = split_ids(IDS[:40], config)
    assert first == split_ids(list(reversed(IDS[:40])), config)
    parts = [set(first[k]) for k in ("train", "val", "test")]
    assert set().union(*parts) == set(IDS[:40]) and sum(map(len, parts)) == 40
    assert split_ids(IDS[:40], DataConfig(seed=8)) != first


def test_fractions_hold_on_average_and_each_part_is_its_own_band():
    config = DataConfig(val_fraction=0.2, test_fraction=0.1)
    split = split_ids(IDS, config)
    assert len(split["test"]) / len(IDS) == pytest.approx(0.1, abs=0.015)
    assert len(split["val"]) / len(IDS) == pytest.approx(0.2, abs=0.015)
    hashes = {part: [unit_hash(c, config.seed) for c in split[part]] for part in split}
    assert max(hashes["test"]) < 0.1 <= min(hashes["val"])
    assert max(hashes["val"]) < 0.3 <= min(hashes["train"])


def test_hash_is_uniform_and_pinned():
    values = np.array([unit_hash(chip, 42) for chip in IDS])
    assert 0.0 <= values.min() and values.max() < 1.0
    assert np.histogram(values, bins=4, range=(0, 1))[0].min() > 900
    assert unit_hash("chip_000", 42) != unit_hash("chip_000", 43)
    assert assign("chip_010", DataConfig()) == "test"


def test_bundled_test_chips_are_pinned(bundled_data):
    from tailseg.dataset import find_pairs
    from tailseg.overlaps import overlap_groups, read_footprints

    pairs = find_pairs(bundled_data)[0]
    groups = overlap_groups(read_footprints(pairs))
    assert split_ids([pair.chip_id for pair in pairs], DataConfig(), groups=groups)["test"] == \
        BUNDLED_TEST


def test_a_split_leaving_a_part_empty_is_refused_with_counts():
    with pytest.raises(SplitError, match=r"no test chip \(train 6, val 2, test 0; seed 42"):
        split_ids([f"chip_{i:03d}" for i in (0, 2, 3, 4, 5, 6, 7, 8)],
                  DataConfig(val_fraction=0.3, test_fraction=0.3), source="data/x")
    with pytest.raises(SplitError) as error:
        split_ids(["chip_000"], DataConfig(), source="data/x")
    assert str(error.value) == (
        "data/x: the split of 1 chips leaves no val and no test chip (train 1, val 0, test 0; "
        "seed 42, val_fraction 0.15, test_fraction 0.15); add chips or change the fractions or "
        "seed")


def test_record_says_how_it_was_made():
    record = split_record(IDS[:50], DataConfig(seed=3), source="data/x")
    assert record == {**split_ids(IDS[:50], DataConfig(seed=3)), "seed": 3,
                      "val_fraction": 0.15, "test_fraction": 0.15, "method": METHOD,
                      "groups": {}}
    assert METHOD.startswith("sha256(seed:group key)")
    with pytest.raises(SplitError, match="^data/x: "):
        split_record(IDS[:1], DataConfig(), source="data/x")
    for split in (split_ids, split_record):
        with pytest.raises(SplitError, match="^dataset: the split of 1 chips"):
            split(IDS[:1], DataConfig())


def test_cli_split_of_bundled_data_plus_five_new_chips_keeps_every_chip(bundled_data, tmp_path,
                                                                       capsys):
    grown = tmp_path / "grown"
    for kind in ("images", "masks"):
        (grown / kind).mkdir(parents=True)
        for path in (bundled_data / kind).iterdir():
            (grown / kind / path.name).symlink_to(path)
    rng = np.random.default_rng(5)
    for index in range(5):
        image, mask = synthetic_chip(64, rng)
        write_image(grown / "images" / f"new_{index}.tif", image)
        write_mask(grown / "masks" / f"new_{index}.tif", mask)
    assert main(["split", str(bundled_data), "--json", str(tmp_path / "before.json")]) == 0
    assert main(["split", str(grown), "--json", str(tmp_path / "after.json")]) == 0
    before = json.loads((tmp_path / "before.json").read_text())
    after = json.loads((tmp_path / "after.json").read_text())
    assert sum(len(before[p]) for p in ("train", "val", "test")) == 100
    assert sum(len(after[p]) for p in ("train", "val", "test")) == 105
    assert {k: v for k, v in _where(after).items() if not k.startswith("new_")} == _where(before)
    assert before["test"] == BUNDLED_TEST
    assert "train 78, val 12, test 10 (seed 42)" in capsys.readouterr().err


def test_chips_that_share_ground_land_in_one_part_keyed_by_their_group():
    # The group takes the part of its key (the plain rule's part of that chip id); a chip
    # alone keeps its plain part.
    config = DataConfig(seed=3)
    plain = split_ids(IDS[:60], config)
    key = plain["test"][0]
    members = [key, plain["train"][0], plain["val"][0]]
    groups = dict.fromkeys(members, key)
    grouped = split_ids(IDS[:60], config, groups=groups)
    assert set(members) <= set(grouped["test"])
    for part in ("train", "val", "test"):
        assert set(grouped[part]) - set(members) == set(plain[part]) - set(members)
    record = split_record(IDS[:60], config, groups=groups)
    assert record["groups"] == {key: sorted(members)}
