"""Cross-validated quality of candidate options against the default, at one time budget per
fold: the comparison the issue asks for before a default changes (not run by `make bench`:
it trains folds x variants models).

    .venv/bin/python benchmarks/compare_quality.py --folds 5 --minutes 4 [--variants ...]

Each variant trains one model per fold with `training.max_minutes = --minutes` (the schedule is
planned to fit it) and reports mean and standard deviation of IoU and F1 across folds, the
pooled IoU and the pooled site metrics. Every variant sees the same folds (same data seed).
Cost: about folds x variants x minutes, plus evaluation. Write the CPU model and flags beside
any number taken from it; on a shared machine the budget buys fewer epochs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import matmul_gflops, write_result  # noqa: E402
from tailseg.config import load_run_yaml, parse_config  # noqa: E402
from tailseg.crossval import cross_validate  # noqa: E402
from tailseg.workflow import resolve_paths  # noqa: E402

# name: (training overrides, test-time augmentation)
VARIANTS: dict[str, tuple[dict, bool]] = {
    "default": ({}, False),
    "default_tta": ({}, True),
    "tversky_0.7": ({"loss": "tversky", "tversky_alpha": 0.7, "tversky_beta": 0.3}, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "zenml.yaml"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=4.0, help="Training budget per fold")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    path = Path(args.config).resolve()
    base = (load_run_yaml(path).get("parameters") or {}).get("config") or {}
    results = {}
    for name in args.variants:
        overrides, tta = VARIANTS[name]
        training = {**base.get("training", {}), **overrides, "max_minutes": args.minutes,
                    "verbose": 0}
        config = resolve_paths(parse_config({**base, "training": training}, str(path)),
                               path.parent)
        report = cross_validate(config, args.folds, tta=tta)
        results[name] = {key: report[key] for key in ("mean", "std", "pooled", "sites_pooled",
                                                      "seconds")}
        results[name]["epochs"] = [f["training"] for f in report["per_fold"]]
        print(f"{name}: IoU {report['mean']['iou']:.4f} +- {report['std']['iou']:.4f}, pooled "
              f"{report['pooled']['iou']:.4f}", file=sys.stderr)
    write_result("quality_cv", {"folds": args.folds, "minutes_per_fold": args.minutes,
                                "matmul_gflops": matmul_gflops(), "variants": results})


if __name__ == "__main__":
    main()
