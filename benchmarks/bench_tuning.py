"""Tuned against untuned: the Optuna search's best hyperparameters and the test IoU they reach,
compared with the default configuration trained with the same epoch budget on the same split.

The full-size comparison costs hours on 2 CPU cores, so the budget is a parameter:
    .venv/bin/python benchmarks/bench_tuning.py --epochs 15 --trials 4 --trial-epochs 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from tailseg.config import RunConfig  # noqa: E402
from tailseg.dataset import find_pairs, load_chips  # noqa: E402
from tailseg.train import train_model  # noqa: E402
from tailseg.tune import apply_best, tune  # noqa: E402
from tailseg.workflow import make_split, resolve_paths, run_evaluation  # noqa: E402


def train_and_test(config: RunConfig, model_config, train_config, chips, split) -> dict:
    started = time.monotonic()
    result = train_model(chips["train"], chips["val"], model_config, train_config)
    metrics, _ = run_evaluation(result.model, split, config)
    return {"test_iou": metrics["iou"], "test_f1": metrics["f1"],
            "threshold": metrics["threshold"], "best_val_iou": max(result.history["val_iou"]),
            "seconds": time.monotonic() - started,
            "hyperparameters": {"learning_rate": train_config.learning_rate,
                                "batch_size": train_config.batch_size,
                                "loss": train_config.loss,
                                "base_filters": model_config.base_filters}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--trial-epochs", type=int, default=4)
    args = parser.parse_args()
    config = resolve_paths(RunConfig(), ROOT)
    pairs, _ = find_pairs(config.data.data_dir)
    loaded, _ = load_chips(pairs)
    split = make_split([c.chip_id for c in loaded], config)
    by_id = {c.chip_id: c for c in loaded}
    chips = {part: [by_id[i] for i in split[part]] for part in ("train", "val")}
    train_config = config.training.model_copy(update={"epochs": args.epochs, "verbose": 0,
                                                      "max_minutes": None})
    model_config = config.resolved_model()
    untuned = train_and_test(config, model_config, train_config, chips, split)
    search = tune(chips["train"], chips["val"], model_config, train_config,
                  config.tuning.model_copy(update={"enabled": True, "n_trials": args.trials,
                                                   "epochs_per_trial": args.trial_epochs,
                                                   "base_filters": [8, 16, 24],
                                                   "losses": ["bce_dice", "focal_dice", "bce"],
                                                   "timeout_minutes": 60}))
    tuned_model, tuned_train = apply_best(model_config, train_config, search["best_params"])
    tuned = train_and_test(config, tuned_model, tuned_train, chips, split)
    write_result("tuning", {"epochs": args.epochs, "trials": args.trials,
                            "trial_epochs": args.trial_epochs, "untuned": untuned,
                            "tuned": tuned, "search": search,
                            "iou_ratio_tuned_over_untuned": tuned["test_iou"] / max(
                                untuned["test_iou"], 1e-9)})


if __name__ == "__main__":
    main()
