"""How far training randomness alone moves the cross-validated numbers, and which options of
`compare_quality.py` stand out from it (reads its result files; trains nothing).

    .venv/bin/python benchmarks/seed_noise.py [results/quality_cv*.json ...] [--out seed_noise]

The default trained with other seeds (`seed_*` variants: weight initialisation, crops,
augmentation; the folds are those of data.seed) gives the yardstick: the sample standard
deviation of the pooled out-of-fold IoU over the seeds. An option's gain is its pooled IoU
minus the seeds' mean; it is beyond the noise only if the gain exceeds K (2) yardsticks (and
worse beyond the noise if the loss does).
An option run with other seeds too (`<option>_seed_<n>` variants, the same seeds as the
default's) is judged by its mean over its runs: the gain of the means is beyond the noise only if
it exceeds K standard errors of a difference of two means, s * sqrt(1/n_option + 1/n_default)
with s the pooled sample standard deviation of both groups; the gain seed by seed (the option
against the default with the same seed) and its standard error are reported beside it. A
rough two-standard-error rule for a handful of runs, not a significance test.
Only runs of the same protocol (folds and epochs per fold) are compared; a variant measured in
several files must give the same pooled IoU in each (fixed seeds reproduce), or this refuses.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, write_result  # noqa: E402

K = 2.0
SEED_PREFIX = "seed_"
BASE_SEED = "base"  # the label of a run with the configuration's own seed (training.seed)
OPTION_SEED = re.compile(r"^(?P<option>.+)_seed_(?P<seed>\d+)$")


def collect(paths: list[Path], folds: int, epochs: int, overlaps: str = "ignore",
            cpu_model: str | None = None) -> dict[str, dict]:
    """Each variant's pooled IoU and per-fold IoU from the result files of this protocol:
    folds, epochs per fold, the labels (overlaps; files from before grouping have none and
    count as "ignore") and, when given, the CPU model (the same seed trains another model on
    another CPU: oneDNN's rounding differs)."""
    found: dict[str, dict] = {}
    for path in paths:
        payload = json.loads(path.read_text())
        if (payload.get("folds"), payload.get("epochs_per_fold")) != (folds, epochs):
            continue
        if payload.get("overlaps", "ignore") != overlaps:
            continue
        if cpu_model and (payload.get("cpu") or {}).get("model") != cpu_model:
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
            if option_and_seed(name)[0] == "default"}


def yardstick(pooled: list[float]) -> float:
    """Sample standard deviation of the pooled IoU over the seed runs (needs two or more)."""
    if len(pooled) < 2:
        raise ValueError(f"the yardstick needs two or more seed runs, got {len(pooled)}")
    return statistics.stdev(pooled)


def beyond_noise(gain: float, noise: float, k: float = K) -> bool:
    """A gain counts only if it exceeds k yardsticks (strictly)."""
    return gain > k * noise


def option_and_seed(name: str) -> tuple[str, str]:
    """Which option a variant runs, and with which seed: "seed_7" is the default with seed 7,
    "dropout_0.3_seed_7" is dropout_0.3 with seed 7, any other name runs the base seed."""
    if name.startswith(SEED_PREFIX) and name[len(SEED_PREFIX):].isdigit():
        return "default", name[len(SEED_PREFIX):]
    match = OPTION_SEED.match(name)
    if match:
        return match["option"], match["seed"]
    return name, BASE_SEED


def standard_error(first: list[float], second: list[float]) -> float:
    """Standard error of the difference of the two groups' means, from their pooled sample
    standard deviation (each group needs one run or more, both together three or more)."""
    freedom = len(first) + len(second) - 2
    if min(len(first), len(second)) < 1 or freedom < 1:
        raise ValueError(f"two groups of {len(first)} and {len(second)} runs: too few")
    squares = sum((value - statistics.fmean(group)) ** 2
                  for group in (first, second) for value in group)
    return math.sqrt(squares / freedom) * math.sqrt(1 / len(first) + 1 / len(second))


def single_run(pooled: float, centre: float, noise: float, k: float = K) -> dict:
    """An option run with one seed against the seeds' mean, in yardsticks (noise)."""
    gain = pooled - centre
    return {"pooled_iou": round(pooled, 4), "gain": round(gain, 4),
            "in_yardsticks": round(gain / noise, 2) if noise else None,
            "beyond_noise": beyond_noise(gain, noise, k),
            "worse_beyond_noise": beyond_noise(-gain, noise, k)}


def seeded_option(runs: dict[str, float], seeds: dict[str, float], k: float = K) -> dict:
    """An option run with several seeds against the default's seed runs (seed label: pooled
    IoU): the gain of the means in standard errors, and the gain seed by seed."""
    option, default = list(runs.values()), list(seeds.values())
    gain = statistics.fmean(option) - statistics.fmean(default)
    error = standard_error(option, default)
    paired = {seed: round(runs[seed] - seeds[seed], 4) for seed in runs if seed in seeds}
    return {"pooled_iou": round(statistics.fmean(option), 4), "gain": round(gain, 4),
            "runs": {seed: round(value, 4) for seed, value in runs.items()},
            "std": round(statistics.stdev(option), 4),
            "standard_error": round(error, 4),
            "in_standard_errors": round(gain / error, 2) if error else None,
            "beyond_noise": beyond_noise(gain, error, k),
            "worse_beyond_noise": beyond_noise(-gain, error, k),
            "gain_by_seed": paired,
            "better_on_seeds": f"{sum(value > 0 for value in paired.values())} of {len(paired)}",
            "paired_standard_error": paired_standard_error(list(paired.values()))}


def paired_standard_error(gains: list[float]) -> float | None:
    """Standard error of the mean gain seed by seed (None under two pairs). Runs with the same
    seed share their crops and initialisation, so this is often far smaller than the standard
    error of the difference of means: reported beside it, not used by the keep rule (with
    three pairs it rests on two degrees of freedom)."""
    if len(gains) < 2:
        return None
    return round(statistics.stdev(gains) / math.sqrt(len(gains)), 4)


def summary(found: dict[str, dict], k: float = K) -> dict:
    """The seed yardstick and every other variant's gain against the seeds' mean."""
    seeds = seed_runs(found)
    pooled = [entry["pooled_iou"] for entry in seeds.values()]
    noise, centre = yardstick(pooled), statistics.fmean(pooled)
    per_fold = list(zip(*(entry["per_fold_iou"] for entry in seeds.values()), strict=True))
    by_seed = {option_and_seed(name)[1]: entry["pooled_iou"] for name, entry in seeds.items()}
    groups: dict[str, dict[str, str]] = {}  # option: {seed label: variant name}
    for name in found:
        option, seed = option_and_seed(name)
        if option != "default":
            groups.setdefault(option, {})[seed] = name
    options = {}
    for option, names in groups.items():
        if len(names) > 1:
            runs = {seed: found[name]["pooled_iou"] for seed, name in names.items()}
            options[option] = seeded_option(runs, by_seed, k)
            continue
        (name,) = names.values()
        options[name] = single_run(found[name]["pooled_iou"], centre, noise, k)
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
    parser.add_argument("--overlaps", choices=["merge", "group", "ignore"], default="ignore",
                        help="Labels of the runs compared (default: %(default)s, the runs "
                             "before chips sharing ground were grouped)")
    parser.add_argument("--cpu-model", default=None,
                        help="Only runs on this CPU model (results' cpu.model)")
    parser.add_argument("--out", default="seed_noise",
                        help="A name under benchmarks/results/ or a path ending in .json")
    args = parser.parse_args()
    paths = args.paths or sorted(RESULTS.glob("quality_cv*.json"))
    try:
        result = summary(collect(paths, args.folds, args.epochs, args.overlaps,
                                 args.cpu_model))
    except ValueError as error:
        parser.error(str(error))
    write_result(args.out, {"folds": args.folds, "epochs_per_fold": args.epochs,
                            "files": [path.name for path in paths], **result})
    print(f"seeds {result['seeds']}: mean {result['seed_mean']:.4f}, "
          f"std {result['seed_std']:.4f}, range {result['seed_range']:.4f}")
    for name, option in result["options"].items():
        mark = ("better beyond noise" if option["beyond_noise"] else
                "worse beyond noise" if option["worse_beyond_noise"] else "within noise")
        if "runs" in option:
            print(f"{name:24s} mean of {len(option['runs'])} seeds {option['pooled_iou']:.4f}  "
                  f"gain {option['gain']:+.4f} ({option['in_standard_errors']} standard "
                  f"errors; better on {option['better_on_seeds']} seeds)  {mark}")
            continue
        print(f"{name:24s} pooled {option['pooled_iou']:.4f}  gain {option['gain']:+.4f} "
              f"({option['in_yardsticks']} std)  {mark}")


if __name__ == "__main__":
    main()
