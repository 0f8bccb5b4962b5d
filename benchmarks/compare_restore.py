"""Which epoch's weights to keep: cross-validated comparison of weight-restore rules, all read
from the same fold models (not run by `make bench`).

    .venv/bin/python benchmarks/compare_restore.py --folds 3 --epochs 30

Why: on 10 to 15 validation chips the validation IoU is noisy, and early in a run, at a high
learning rate, it can spike. A fresh-clone `make run` (2026-11-28) kept epoch 5 of 25 for a
validation IoU of 0.52 and scored 0.116 on the test chips; early stopping then ended the run two
epochs before its planned decay did.

Each fold trains once (fixed epochs, so the cosine decay ends at the last one) and a callback
keeps every epoch's weights. A rule picks an epoch from the validation IoUs:

* `best_any`: the best validation IoU of any epoch (the rule until 2026-11-28);
* `best_from_P`: the best among the epochs that end with the schedule at least P done
  (progress = epoch / epochs here, as the decay is planned for exactly these epochs);
* `last`: the last epoch (the end of the decay).

For each rule, the picked weights choose their threshold on the validation chips and score the
fold's test chips and the held-out chips, as in compare_quality.py (same folds, same held-out
chips). Write the CPU model and flags beside any number taken from it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tailseg.runtime import apply_tensorflow_environment  # noqa: E402

apply_tensorflow_environment()

import keras  # noqa: E402

from benchmarks.common import cpu, matmul_gflops, result_path, write_result  # noqa: E402
from benchmarks.compare_quality import (  # noqa: E402
    SWEEP,
    protocol_chips,
    score,
    summarise,
    variant_config,
)
from tailseg.crossval import assign_folds, fold_split  # noqa: E402
from tailseg.evaluate import best_threshold, predict_chips, threshold_sweep  # noqa: E402
from tailseg.metrics import Counts, scores  # noqa: E402
from tailseg.sites import SiteCounts  # noqa: E402
from tailseg.train import MONITOR, pick_epoch, train_model  # noqa: E402
from tailseg.workflow import keras_predict  # noqa: E402

RULES = {"best_any": 0.0, "best_from_0.5": 0.5, "best_from_0.75": 0.75, "last": 1.0}


class Snapshots(keras.callbacks.Callback):
    """Every epoch's weights and validation IoU."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[list[np.ndarray]] = []
        self.values: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.values.append(float((logs or {}).get(MONITOR, -np.inf)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "zenml.yaml"))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--min-site-ha", type=float, default=0.5)
    parser.add_argument("--out", default="restore_cv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result_path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # Early stopping off: every rule must see the same, complete runs.
    config = variant_config(args.config, {"epochs": args.epochs, "max_minutes": None,
                                          "verbose": 0, "early_stopping_patience": args.epochs})
    protocol = protocol_chips(config)
    chips, holdout, row_areas, excluded, groups = (protocol.chips, protocol.holdout,
                                                   protocol.row_areas, protocol.excluded,
                                                   protocol.groups)
    fold_of = assign_folds(list(chips), args.folds, config.data.seed, groups)
    per_fold = {rule: [] for rule in RULES}
    pooled = {rule: (Counts(), SiteCounts(), Counts()) for rule in RULES}
    holdout_iou = {rule: [] for rule in RULES}
    picked = {rule: [] for rule in RULES}
    curves, started = [], time.monotonic()
    for fold in range(args.folds):
        split = fold_split(fold_of, fold, config.data.val_fraction, config.data.seed, groups)
        parts = {part: [chips[chip_id] for chip_id in ids] for part, ids in split.items()}
        snapshots = Snapshots()
        result = train_model(parts["train"], parts["val"], config.resolved_model(),
                             config.training, extra_callbacks=[snapshots])
        curves.append([round(v, 4) for v in snapshots.values])
        epochs = len(snapshots.values)
        for rule, start in RULES.items():
            progress = [(epoch + 1) / args.epochs for epoch in range(epochs)]
            epoch = pick_epoch(snapshots.values, progress, start)
            picked[rule].append(epoch + 1)
            result.model.set_weights(snapshots.weights[epoch])
            predict = keras_predict(result.model)
            threshold = best_threshold(threshold_sweep(
                parts["val"], predict_chips(predict, parts["val"], 4), SWEEP))
            counts = score(parts["test"], predict_chips(predict, parts["test"], 4), threshold,
                           row_areas, args.min_site_ha)
            per_fold[rule].append({**scores(counts[0]), "threshold": threshold})
            pooled[rule] = tuple(a + b for a, b in zip(pooled[rule], counts, strict=True))
            held = score(holdout, predict_chips(predict, holdout, 4), threshold, row_areas,
                         args.min_site_ha)[0]
            holdout_iou[rule].append(round(scores(held)["iou"], 4))
        logging.info("fold %d/%d: %s", fold + 1, args.folds,
                     {rule: (picked[rule][-1], round(per_fold[rule][-1]["iou"], 4))
                      for rule in RULES})
    report = {rule: {**summarise(per_fold[rule], *pooled[rule]), "epochs_picked": picked[rule],
                     "holdout_iou_fold_models": holdout_iou[rule],
                     "holdout_iou_mean": float(np.mean(holdout_iou[rule]))}
              for rule in RULES}
    write_result(args.out, {
        "folds": args.folds, "epochs_per_fold": args.epochs, "min_site_ha": args.min_site_ha,
        "rules": RULES, "cv_chips": len(chips),
        "holdout_chips": sorted(chip.chip_id for chip in holdout), "excluded": sorted(excluded),
        "validation_iou_per_epoch": curves, "seconds": round(time.monotonic() - started, 1),
        "matmul_gflops": round(matmul_gflops(), 1), "cpu": cpu(), "rules_results": report})


if __name__ == "__main__":
    main()
