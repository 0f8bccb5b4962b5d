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
"""

from __future__ import annotations

import argparse
import logging
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
    summarise,
    variant_config,
)
from tailseg.evaluate import best_threshold, threshold_sweep  # noqa: E402
from tailseg.metrics import Counts, scores  # noqa: E402
from tailseg.sites import SiteCounts, site_scores  # noqa: E402

PARTS = ("val", "test", "holdout")


def load_member(directory: Path, tta: bool = False) -> list[dict[str, dict[str, np.ndarray]]]:
    """One run's saved folds: [fold] -> part -> chip id -> probability (float32)."""
    suffix = "_tta" if tta else ""
    paths = sorted(directory.glob(f"fold*{suffix}.npz"),
                   key=lambda path: int(path.stem.removeprefix("fold").removesuffix("_tta")))
    paths = [path for path in paths if path.stem.endswith("_tta") == tta]
    if not paths:
        raise SystemExit(f"{directory}: no fold*{suffix}.npz files (compare_quality.py "
                         "--save-probabilities writes them)")
    folds = []
    for path in paths:
        with np.load(path) as stored:
            fold = {part: {} for part in PARTS}
            for key in stored.files:
                part, chip_id = key.split("/", 1)
                fold[part][chip_id] = stored[key].astype(np.float32)
        folds.append(fold)
    return folds


def check_same_folds(members: dict[str, list[dict]]) -> None:
    """Members must hold the same number of folds with the same chips in every part."""
    (first_name, first), *others = members.items()
    for name, folds in others:
        if len(folds) != len(first):
            raise SystemExit(f"{name}: {len(folds)} folds, {first_name}: {len(first)}")
        for index, (fold, reference) in enumerate(zip(folds, first, strict=True)):
            for part in PARTS:
                if sorted(fold[part]) != sorted(reference[part]):
                    raise SystemExit(f"{name}: fold {index} {part} chips differ from "
                                     f"{first_name}'s: not runs of the same folds")


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
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", type=Path,
                        help="Directories of saved probabilities, DIR/<variant>")
    parser.add_argument("--config", default=str(ROOT / "zenml.yaml"))
    parser.add_argument("--overlaps", choices=["merge", "group", "ignore"], default=None)
    parser.add_argument("--min-site-ha", type=float, default=0.5)
    parser.add_argument("--tta", action="store_true", help="Average the flip-TTA probabilities")
    parser.add_argument("--out", default="quality_cv_ensemble")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    members = {str(path): load_member(path, args.tta) for path in args.members}
    check_same_folds(members)
    base = variant_config(args.config, {})
    if args.overlaps:
        base = base.model_copy(update={"data": base.data.model_copy(
            update={"overlaps": args.overlaps})})
    protocol = protocol_chips(base)
    missing = {chip_id for folds in members.values() for fold in folds
               for part in ("val", "test") for chip_id in fold[part]} - set(protocol.chips)
    if missing or sorted(next(iter(members.values()))[0]["holdout"]) != \
            sorted(chip.chip_id for chip in protocol.holdout):
        raise SystemExit("the saved chips are not this configuration's cross-validation and "
                         f"held-out chips (unknown: {sorted(missing)[:5]}); pass the run's "
                         "--config and --overlaps")
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
                            "overlaps": args.overlaps or "config",
                            "min_site_ha": args.min_site_ha, "cpu": cpu(),
                            "ensembles": results})


if __name__ == "__main__":
    main()
