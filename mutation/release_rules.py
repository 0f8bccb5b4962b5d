"""Break each release rule in a copy of the project and check that the default tests notice.

The six changes of issue 12 (threshold chosen on the test split, best-epoch weights not
restored, production never re-evaluated, configured loss ignored, augmentation off, precision
and recall swapped), each applied alone to a fresh copy; the tests that guard the rule run in
the copy (they are default tests, not marked slow). A change that leaves them passing is
reported as SURVIVED and the script exits 1.

    .venv/bin/python mutation/release_rules.py [--only NAME]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(".venv", ".git", "exports", "runs", "logs", "mutants",
                                "__pycache__", ".pytest_cache", "*.egg-info")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation("threshold chosen on the test split", "tailseg/workflow.py",
             'val = chips_for(config, split["val"])', 'val = chips_for(config, split["test"])',
             ("tests/test_release.py",)),
    Mutation("best-epoch weights not restored", "tailseg/train.py",
             "            self.model.set_weights(self.weights)", "            pass",
             ("tests/test_train.py",)),
    Mutation("production model never re-evaluated", "steps/promotion/model_gate.py",
             "    comparison = production_comparison(", "    comparison = None and (",
             ("tests/test_pipeline.py::test_run_exports_a_versioned_model_and_promotes_it",
              "tests/test_pipeline.py::test_impossible_gate_rejects_and_leaves_serving_untouched")),
    Mutation("configured loss ignored", "tailseg/train.py",
             "loss=get_loss(config.loss, config.tversky_alpha, config.tversky_beta)",
             'loss=get_loss("bce_dice")',
             ("tests/test_losses.py", "tests/test_train.py")),
    Mutation("augmentation switched off", "tailseg/dataset.py",
             "            if config.augment:", "            if False:",
             ("tests/test_dataset.py",)),
    Mutation("precision and recall swapped", "tailseg/metrics.py",
             '"precision": _ratio(tp, tp + fp, fn == 0),\n        "recall": _ratio(tp, tp + fn, '
             'fp == 0),',
             '"precision": _ratio(tp, tp + fn, fp == 0),\n        "recall": _ratio(tp, tp + fp, '
             'fn == 0),',
             ("tests/test_metrics.py", "tests/test_gate.py")),
]


def apply(mutation: Mutation, tree: Path) -> None:
    path = tree / mutation.path
    text = path.read_text()
    if text.count(mutation.original) != 1:
        raise SystemExit(f"{mutation.path}: expected exactly one {mutation.original!r}; the code "
                         "changed, update mutation/release_rules.py")
    path.write_text(text.replace(mutation.original, mutation.mutated))


def killed(mutation: Mutation) -> bool:
    """Whether the guarding tests fail on a copy with the mutation applied."""
    with tempfile.TemporaryDirectory(prefix="tailseg-mutation-") as folder:
        tree = Path(folder) / "tree"
        shutil.copytree(ROOT, tree, ignore=IGNORE, symlinks=True)
        apply(mutation, tree)
        # Run from the copy: its folder comes first on sys.path, ahead of the editable install.
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                   *mutation.tests]
        result = subprocess.run(command, cwd=tree, capture_output=True, text=True)
        tail = "\n    ".join(result.stdout.strip().splitlines()[-3:])
        print(f"    {tail}")
        return result.returncode == 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="Run only the mutation whose name contains this")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name]
    survived = []
    for mutation in chosen:
        print(f"{mutation.name} ({mutation.path}):", flush=True)
        outcome = killed(mutation)
        print(f"  -> {'killed' if outcome else 'SURVIVED'}", flush=True)
        if not outcome:
            survived.append(mutation.name)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} release-rule mutations killed"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
