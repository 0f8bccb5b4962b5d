"""The model card states the run's own facts: split sizes, tailings share, excluded chips and
the threshold rule that was applied."""

from __future__ import annotations

import numpy as np
import pytest

from tailseg.config import DataConfig, RunConfig
from tailseg.model_card import render_model_card, tailings_share
from tailseg.publish import _split_tailings_share, excluded_chips
from tests.rasters import make_dataset, write_image, write_mask

METRICS = {"iou": 0.4, "f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.9}
DECISION = {"blessed": True, "reasons": []}


def split_of(train: int, val: int, test: int) -> dict:
    ids = iter(f"chip_{index:03d}" for index in range(train + val + test))
    return {part: [next(ids) for _ in range(count)]
            for part, count in (("train", train), ("val", val), ("test", test))} | {"seed": 7}


def card(split: dict | None = None, config: dict | None = None, metrics: dict | None = None,
         **extra) -> str:
    return render_model_card("tailseg", 1, config or {}, split or split_of(5, 2, 3),
                             METRICS | (metrics or {}), 0.35, {}, DECISION, **extra)


def test_counts_come_from_the_split():
    # Guards a card that said "Trained on 99 chips" whatever the run trained on (76 in a real
    # run: 99 is the number of valid chips before the split).
    text = card(split_of(5, 2, 3))
    assert "Chips: 5 for training, 2 for validation, 3 for test." in text
    assert "Trained on 5 Sentinel-2" in text and "validated on 2 and tested on 3 chips" in text
    assert "99" not in text


def test_a_fixed_threshold_is_not_called_chosen_on_validation():
    # Guards "(chosen on the validation split)" printed beside a configured, fixed threshold.
    fixed = card(config={"evaluation": {"threshold": 0.35}},
                 metrics={"threshold_selection": "0.35"})
    assert "**0.35** (fixed by the run configuration (`evaluation.threshold: 0.35`)" in fixed
    assert "validation split" not in fixed
    assert "fixed by configuration, not tuned" in fixed
    # The configuration alone (metrics without the selection) also says so.
    assert "evaluation.threshold: 0.35" in card(config={"evaluation": {"threshold": 0.35}})
    chosen = card(metrics={"threshold_selection": "best_val_iou"})
    assert "**0.35** (chosen to maximise IoU on the validation split)" in chosen
    assert "fixed by" not in chosen
    edge = card(metrics={"threshold_selection": "best_val_iou", "threshold_at_sweep_end": True})
    assert "at the end of the sweep" in edge


def test_excluded_chips_are_listed_with_their_reasons():
    text = card(excluded={"chip_023": "image is 448 x 48 pixels but mask is 448 x 448",
                          "chip_050": "quarantined by dataset validation"})
    assert "Excluded chips (2, in no split):" in text
    assert "- chip_023: image is 448 x 48 pixels but mask is 448 x 448\n" in text
    assert "- chip_050: quarantined by dataset validation" in text
    assert "Excluded chips: none." in card(excluded={})
    assert "Excluded chips: not recorded" in card()


def test_tailings_share_is_the_runs_own_or_the_readme_with_its_source():
    # Guards "about 3 % of pixels" stated for any data (the bundled data: median 3.4 %,
    # mean 9.5 %).
    masks = [np.zeros((10, 10), np.uint8) for _ in range(3)]
    masks[1][:2] = 1  # 20 %
    masks[2][:5] = 1  # 50 %
    share = tailings_share(masks)
    assert share["median"] == pytest.approx(0.2) and share["mean"] == pytest.approx(0.7 / 3)
    assert share["pooled"] == pytest.approx(70 / 300) and share["chips"] == 3
    text = card(share=share)
    assert ("Tailings cover 20.0% of a chip's pixels at the median and 23.3% on average "
            "(0.00% to 50.0%; 23.3% of all pixels), over the 3 chips of this run.") in text
    assert "about 3 %" not in text and "about 20.0% of a chip's pixels" in text
    assert "median 3.4 %, mean 9.5 % (data/tailings-br/README.md)" in card()


def test_publish_finds_the_share_and_the_excluded_chips_of_a_dataset(tmp_path):
    root = make_dataset(tmp_path / "data", n_chips=5, size=16, seed=3)
    # A truncated image (as chip_023 of the bundled data) and a mask without an image.
    write_image(root / "images" / "chip_100.tif", np.full((3, 4, 16), 0.1))
    write_mask(root / "masks" / "chip_100.tif", np.zeros((16, 16), np.uint8))
    write_mask(root / "masks" / "chip_101.tif", np.zeros((16, 16), np.uint8))
    config = RunConfig(data=DataConfig(data_dir=str(root)))
    split = {"train": ["chip_000", "chip_001"], "val": ["chip_002"], "test": ["chip_003"]}
    excluded = excluded_chips(config, split)
    assert list(excluded) == ["chip_004", "chip_100", "chip_101"]
    assert "quarantined by dataset validation" in excluded["chip_004"]
    assert "16 x 4" in excluded["chip_100"] and "mask has no image" in excluded["chip_101"]
    share = _split_tailings_share(config, split)
    from tailseg.raster import read_mask

    fractions = [read_mask(root / "masks" / f"{chip}.tif").data.mean()
                 for chip in ("chip_000", "chip_001", "chip_002", "chip_003")]
    assert share["chips"] == 4 and share["mean"] == pytest.approx(np.mean(fractions))
    # Chips the data folder does not hold are left out; with none found the card cites the
    # dataset README instead of failing the export.
    assert _split_tailings_share(config, {**split, "test": ["chip_003", "gone"]})["chips"] == 4
    assert _split_tailings_share(config, {"train": ["a"], "val": ["b"], "test": ["c"]}) is None


def test_the_card_says_how_overlapping_chips_were_handled():
    assert "given the labels of the chips overlapping it (data.overlaps: merge)" in card()
    ignored = card(config={"data": {"overlaps": "ignore"}})
    assert "test chips may cover training ground" in ignored
    assert "data.overlaps: merge" not in ignored
    assert "(data.overlaps: group)" in card(config={"data": {"overlaps": "group"}})
