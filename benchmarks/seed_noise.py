"""How far training randomness alone moves the cross-validated numbers, and which options of
`compare_quality.py` stand out from it (reads its result files; trains nothing).

    .venv/bin/python benchmarks/seed_noise.py [results/quality_cv*.json ...] [--out seed_noise]

The default trained with other seeds (`seed_*` variants: weight initialisation, crops,
augmentation; the folds are those of data.seed) gives the yardstick: the sample standard
deviation of the pooled out-of-fold IoU over the seeds. An option's gain is its pooled IoU
minus the seeds' mean; it is beyond the noise only if the gain exceeds K (2) yardsticks (and
worse beyond the noise if the loss does).
Only runs of the same protocol (folds and epochs per fold) are compared; a variant measured in
several files must give the same pooled IoU in each (fixed seeds reproduce), or this refuses.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, write_result  # noqa: E402

K = 2.0
SEED_PREFIX = "seed_"


def collect(paths: list[Path], folds: int, epochs: int) -> dict[str, dict]:
    """Each variant's pooled IoU and per-fold IoU from the result files of this protocol."""
    found: dict[str, dict] = {}
    for path in paths:
        payload = json.loads(path.read_text())
        if (payload.get("folds"), payload.get("epochs_per_fold")) != (folds, epochs):
            continue
        if payload.get("minutes_per_fold") is not None:
            continue  # a budget-planned run: its epochs depend on the machine's load
        for name, result in payload["variants"].items():
            plain = result["plain"]
            entry = {"pooled_iou": plain["pooled"]["iou"], "per_fold_iou": plain["per_fold_iou"],
                     "file": path.name}
            if name in found:
                if abs(found[name]["pooled_iou"] - entry["pooled_iou"]) > 1e-3:
                    raise ValueError(f"{path}: variant {name!r} has pooled IoU "
                                     f"{entry['pooled_iou']:.4f}, but {found[name]['file']} "
                                     f"has {found[name]['pooled_iou']:.4f}: not one protocol")
                continue
            found[name] = entry
    return found


def seed_runs(found: dict[str, dict]) -> dict[str, dict]:
    """The default and its other-seed runs."""
    return {name: entry for name, entry in found.items()
            if name == "default" or name.startswith(SEED_PREFIX)}


def yardstick(pooled: list[float]) -> float:
    """Sample standard deviation of the pooled IoU over the seed runs (needs two or more)."""
    if len(pooled) < 2:
        raise ValueError(f"the yardstick needs two or more seed runs, got {len(pooled)}")
    return statistics.stdev(pooled)


def beyond_noise(gain: float, noise: float, k: float = K) -> bool:
    """A gain counts only if it exceeds k yardsticks (strictly)."""
    return gain > k * noise


def summary(found: dict[str, dict], k: float = K) -> dict:
    """The seed yardstick and every other variant's gain against the seeds' mean."""
    seeds = seed_runs(found)
    pooled = [entry["pooled_iou"] for entry in seeds.values()]
    noise, centre = yardstick(pooled), statistics.fmean(pooled)
    per_fold = list(zip(*(entry["per_fold_iou"] for entry in seeds.values()), strict=True))
    options = {}
    for name, entry in found.items():
        if name in seeds:
            continue
        gain = entry["pooled_iou"] - centre
        options[name] = {"pooled_iou": round(entry["pooled_iou"], 4), "gain": round(gain, 4),
                         "in_yardsticks": round(gain / noise, 2) if noise else None,
                         "beyond_noise": beyond_noise(gain, noise, k),
                         "worse_beyond_noise": beyond_noise(-gain, noise, k)}
    return {"k": k,
            "seeds": {name: round(entry["pooled_iou"], 4) for name, entry in seeds.items()},
            "seed_mean": round(centre, 4), "seed_std": round(noise, 4),
            "seed_range": round(max(pooled) - min(pooled), 4),
            "per_fold_seed_std": [round(statistics.stdev(values), 4) for values in per_fold],
            "options": dict(sorted(options.items(), key=lambda item: -item[1]["gain"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="compare_quality result files (default: results/quality_cv*.json; "
                             "runs from before a code change that moves them go under "
                             "results/superseded/)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default="seed_noise",
                        help="A name under benchmarks/results/ or a path ending in .json")
    args = parser.parse_args()
    paths = args.paths or sorted(RESULTS.glob("quality_cv*.json"))
    try:
        result = summary(collect(paths, args.folds, args.epochs))
    except ValueError as error:
        parser.error(str(error))
    write_result(args.out, {"folds": args.folds, "epochs_per_fold": args.epochs,
                            "files": [path.name for path in paths], **result})
    print(f"seeds {result['seeds']}: mean {result['seed_mean']:.4f}, "
          f"std {result['seed_std']:.4f}, range {result['seed_range']:.4f}")
    for name, option in result["options"].items():
        mark = ("better beyond noise" if option["beyond_noise"] else
                "worse beyond noise" if option["worse_beyond_noise"] else "within noise")
        print(f"{name:24s} pooled {option['pooled_iou']:.4f}  gain {option['gain']:+.4f} "
              f"({option['in_yardsticks']} std)  {mark}")


if __name__ == "__main__":
    main()
