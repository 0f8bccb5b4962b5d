"""Print the mutation score of the last `mutmut run` (from mutants/mutmut-cicd-stats.json,
written by `mutmut export-cicd-stats`), and exit 1 when it is below --min-score.

Survival rate = (survived + not covered by any test) / mutants checked; timeouts and
suspicious mutants count as killed (the tests noticed something), skipped ones not at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def summarise(stats: dict) -> dict:
    checked = stats["total"] - stats["skipped"]
    survived = stats["survived"] + stats["no_tests"]
    return {"mutants": checked, "killed": checked - survived, "survived": stats["survived"],
            "not_covered": stats["no_tests"],
            "survival_rate": survived / checked if checked else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", default="mutants/mutmut-cicd-stats.json")
    parser.add_argument("--min-score", type=float, default=0.0,
                        help="Fail below this share of killed mutants (0 to 1)")
    args = parser.parse_args()
    path = Path(args.stats)
    if not path.is_file():
        print(f"{path}: not found; run `mutmut run` and `mutmut export-cicd-stats` first",
              file=sys.stderr)
        return 2
    summary = summarise(json.loads(path.read_text()))
    score = 1 - summary["survival_rate"]
    print(f"mutation score {score:.1%}: {summary['killed']} of {summary['mutants']} mutants "
          f"killed, {summary['survived']} survived, {summary['not_covered']} not covered by "
          f"any test (survival rate {summary['survival_rate']:.1%}); survivors: "
          "`.venv/bin/mutmut results`")
    return 0 if score >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
