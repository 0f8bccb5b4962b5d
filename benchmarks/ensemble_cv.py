"""Cross-validated quality of an ensemble of compare_quality.py runs (same folds: other seeds or
options), from the probabilities they saved, without retraining.

    .venv/bin/python benchmarks/compare_quality.py --variants seed_11 default seed_7 \\
        --save-probabilities DIR ...
    .venv/bin/python benchmarks/ensemble_cv.py DIR/seed_11 DIR/default DIR/seed_7 --out NAME

Each fold's ensemble is the mean probability of the members' fold models; like a single model
it picks its threshold on the fold's validation chips (the members' validation chips are the
same: the folds and validation chips follow data.seed, not the training seed) and is scored on
the fold's test chips. Pooled over folds as compare_quality.py pools a variant. Every member
alone and every leading subset (the first 2, 3, ... members) are scored the same way from the
same saved float16 probabilities, so the ensemble is compared with its members on equal terms.
The held-out chips: each fold's ensemble at its threshold, and all folds' models together at
the threshold best on the pooled out-of-fold ensemble predictions.

Members must be complete runs (run.json, written after the last fold) of the same folds, scored
on the same labels (folds, overlaps mode, data seed and fractions equal); the labels and chips
are those of --config with the runs' data settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu, write_result  # noqa: E402
from benchmarks.compare_quality import (  # noqa: E402
    SITE_FILTERS,
    SWEEP,
    pick_site_filter,
    protocol_chips,
    score,
    score_masks,
    site_filters_on_holdout,
    summarise,
    variant_config,
)
from tailseg.evaluate import best_threshold, threshold_sweep  # noqa: E402
from tailseg.metrics import Counts, scores  # noqa: E402
from tailseg.sites import SiteCounts, site_scores  # noqa: E402

PARTS = ("val", "test", "holdout")


FOLD_FILE = re.compile(r"fold(\d+)(_tta)?\.npz")
# run.json entries that must be equal in every member: the same folds, scored on the same labels.
SAME = ("folds", "overlaps", "data_seed", "val_fraction", "test_fraction")


def read_run(directory: Path) -> dict:
    """A run's run.json, written by compare_quality.py once all its folds are saved."""
    path = directory / "run.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path}: missing; compare_quality.py --save-probabilities writes it "
                         "when the run's last fold is saved (an unfinished run has none)") from None
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path}: unreadable ({error})") from None
    missing = [key for key in SAME if key not in record]
    if missing:
        raise SystemExit(f"{path}: lacks {missing}")
    return record


def load_member(directory: Path, tta: bool = False, folds: int | None = None
                ) -> list[dict[str, dict[str, np.ndarray]]]:
    """One run's saved folds: [fold] -> part -> chip id -> probability (float32). With folds,
    exactly the files fold0 ... fold<folds - 1> (of the TTA'd probabilities with tta)."""
    found = {}
    for path in directory.glob("fold*.npz") if directory.is_dir() else []:
        match = FOLD_FILE.fullmatch(path.name)
        if match and bool(match.group(2)) == tta:
            found[int(match.group(1))] = path
    if not found:
        raise SystemExit(f"{directory}: no fold<k>{'_tta' if tta else ''}.npz files "
                         "(compare_quality.py --save-probabilities writes them)")
    if folds is not None and sorted(found) != list(range(folds)):
        raise SystemExit(f"{directory}: fold files {sorted(found)}, but run.json says "
                         f"{folds} folds (0 to {folds - 1})")
    loaded = []
    for index in sorted(found):
        with np.load(found[index]) as stored:
            fold = {part: {} for part in PARTS}
            for key in stored.files:
                part, chip_id = key.split("/", 1)
                fold[part][chip_id] = stored[key].astype(np.float32)
        loaded.append(fold)
    return loaded


def check_same_folds(members: dict[str, list[dict]]) -> None:
    """Members must hold the same number of folds with the same chips in every part, and each
    run's test folds must not share a chip (every chip scored once)."""
    (first_name, first), *others = members.items()
    for name, folds in others:
        if len(folds) != len(first):
            raise SystemExit(f"{name}: {len(folds)} folds, {first_name}: {len(first)}")
        for index, (fold, reference) in enumerate(zip(folds, first, strict=True)):
            for part in PARTS:
                if sorted(fold[part]) != sorted(reference[part]):
                    raise SystemExit(f"{name}: fold {index} {part} chips differ from "
                                     f"{first_name}'s: not runs of the same folds")
    tested = [chip_id for fold in first for chip_id in fold["test"]]
    if len(tested) != len(set(tested)):
        raise SystemExit(f"{first_name}: a chip is in the test part of two folds")


def check_same_runs(records: dict[str, dict]) -> dict:
    """The run.json entries every member shares (SAME), or an error naming the difference;
    runs that trained a U-Net with the same seed are refused (a model counted twice)."""
    seen: dict[int, str] = {}
    for name, record in records.items():
        for seed in record.get("training_seeds", [record.get("training_seed")]):
            if seed in seen:
                raise SystemExit(f"{name} and {seen[seed]} both trained seed {seed}: an "
                                 "ensemble of them would count that model twice")
            seen[seed] = name
    (first_name, first), *others = records.items()
    for name, record in others:
        for key in SAME:
            if record[key] != first[key]:
                raise SystemExit(f"{name}: {key} {record[key]!r}, {first_name}: "
                                 f"{first[key]!r}; only runs of the same folds and labels "
                                 "average")
    return {key: first[key] for key in SAME}


def mean_probabilities(members: list[list[dict]], fold: int, part: str) -> dict[str, np.ndarray]:
    ids = members[0][fold][part]
    return {chip_id: np.mean([member[fold][part][chip_id] for member in members], axis=0)
            for chip_id in ids}


def cross_validate(members: list[list[dict]], chips: dict, holdout: list, row_areas: dict,
                   min_ha: float) -> dict:
    """The mean-probability ensemble of members (one model per member and fold) scored as
    compare_quality.run_variant scores a variant."""
    options = {"plain": 0.0, "plain_min_site": min_ha}
    names = [*options, *SITE_FILTERS]
    per_fold = {name: [] for name in names}
    pooled = {name: (Counts(), SiteCounts(), Counts()) for name in names}
    holdout_single = {name: [] for name in names}
    oof_chips, oof_probabilities, holdout_folds = [], [], []
    for fold in range(len(members[0])):
        parts = {part: mean_probabilities(members, fold, part) for part in PARTS}
        val = [chips[chip_id] for chip_id in parts["val"]]
        test = [chips[chip_id] for chip_id in parts["test"]]
        val_p, test_p = list(parts["val"].values()), list(parts["test"].values())
        held_p = [parts["holdout"][chip.chip_id] for chip in holdout]
        threshold = best_threshold(threshold_sweep(val, val_p, SWEEP))
        for name, option_min in options.items():
            counts = score(test, test_p, threshold, row_areas, option_min)
            per_fold[name].append({**scores(counts[0]), "threshold": threshold})
            pooled[name] = tuple(a + b for a, b in zip(pooled[name], counts, strict=True))
            held = score(holdout, held_p, threshold, row_areas, option_min)[0]
            holdout_single[name].append(scores(held)["iou"])
        for name, apply in SITE_FILTERS.items():
            pair = pick_site_filter(name, val, val_p, row_areas, min_ha)
            counts = score_masks(test, [apply(p, *pair) for p in test_p], row_areas, min_ha)
            per_fold[name].append({**scores(counts[0]), "threshold": list(pair)})
            pooled[name] = tuple(a + b for a, b in zip(pooled[name], counts, strict=True))
            held = score_masks(holdout, [apply(p, *pair) for p in held_p], row_areas, min_ha)[0]
            holdout_single[name].append(scores(held)["iou"])
        oof_chips.extend(test)
        oof_probabilities.extend(test_p)
        holdout_folds.append(held_p)
    report = {}
    for name in names:
        report[name] = summarise(per_fold[name], *pooled[name])
        report[name]["holdout_iou_fold_models"] = [round(v, 4) for v in holdout_single[name]]
    everything = [np.mean(stack, axis=0) for stack in zip(*holdout_folds, strict=True)]
    threshold = best_threshold(threshold_sweep(oof_chips, oof_probabilities, SWEEP))
    for name, option_min in options.items():
        held, held_sites, _ = score(holdout, everything, threshold, row_areas, option_min)
        report[name]["holdout_ensemble"] = {**scores(held), "threshold": threshold,
                                            "sites": site_scores(held_sites)}
    site_filters_on_holdout(report, oof_chips, oof_probabilities, holdout, everything,
                            row_areas, min_ha)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", type=Path,
                        help="Directories of saved probabilities, DIR/<variant>")
    parser.add_argument("--config", default=str(ROOT / "zenml.yaml"))
    parser.add_argument("--min-site-ha", type=float, default=0.5)
    parser.add_argument("--tta", action="store_true", help="Average the flip-TTA probabilities")
    parser.add_argument("--out", default="quality_cv_ensemble")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    records = {str(path): read_run(path) for path in args.members}
    shared = check_same_runs(records)
    members = {str(path): load_member(path, args.tta, shared["folds"]) for path in args.members}
    check_same_folds(members)
    base = variant_config(args.config, {})
    base = base.model_copy(update={"data": base.data.model_copy(update={
        key: shared[key] for key in ("overlaps", "val_fraction", "test_fraction")} | {
        "seed": shared["data_seed"]})})
    protocol = protocol_chips(base)
    first = next(iter(members.values()))
    tested = sorted(chip_id for fold in first for chip_id in fold["test"])
    if tested != sorted(protocol.chips) or sorted(first[0]["holdout"]) != \
            sorted(chip.chip_id for chip in protocol.holdout):
        raise SystemExit("the saved test folds and held-out chips are not the cross-validation "
                         f"and held-out chips of {args.config} with the runs' data settings "
                         f"({len(tested)} chips tested, {len(protocol.chips)} expected): pass "
                         "the runs' --config")
    runs = list(members.values())
    names = [path.name for path in args.members]
    results = {}
    for name, folds in zip(names, runs, strict=True):
        results[name] = cross_validate([folds], protocol.chips, protocol.holdout,
                                       protocol.row_areas, args.min_site_ha)
    for size in range(2, len(runs) + 1):
        label = "ensemble_" + "+".join(names[:size])
        results[label] = cross_validate(runs[:size], protocol.chips, protocol.holdout,
                                        protocol.row_areas, args.min_site_ha)
    for label, report in results.items():
        plain = report["plain"]
        print(f"{label}: pooled IoU {plain['pooled']['iou']:.4f}, fold IoU "
              f"{plain['mean_iou']:.4f} +- {plain['std_iou']:.4f}, hysteresis "
              f"{report['hysteresis']['pooled']['iou']:.4f}, held-out ensemble "
              f"{plain['holdout_ensemble']['iou']:.4f}", file=sys.stderr)
    write_result(args.out, {"members": [str(path) for path in args.members], "tta": args.tta,
                            **shared, "runs": records,
                            "min_site_ha": args.min_site_ha, "cpu": cpu(),
                            "ensembles": results})


if __name__ == "__main__":
    main()
