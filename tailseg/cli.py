"""The `tailseg` command line. Each sub-command is a thin wrapper over library functions.

Sub-commands register in COMMANDS; heavy imports (TensorFlow, ZenML) happen inside handlers so
`tailseg --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from tailseg.errors import TailsegError

logger = logging.getLogger("tailseg")


def _write_json(payload: dict, path: str | None) -> None:
    text = json.dumps(payload, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    else:
        print(text)


# --- run -------------------------------------------------------------------------------------

def _add_run(subparsers) -> None:
    parser = subparsers.add_parser("run", help="Run the training pipeline on the active ZenML "
                                               "stack (local default: SQLite + local files).")
    parser.add_argument("--config", default="zenml.yaml",
                        help="ZenML run configuration with tailseg parameters (default: %(default)s)")
    parser.add_argument("--pipeline", default="training", choices=["training"],
                        help="Pipeline to run (default: %(default)s)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from pipelines.runner import run_pipeline

    summary = run_pipeline(args.pipeline, args.config)
    print(json.dumps(summary, indent=2))
    return 0


# --- evaluate --------------------------------------------------------------------------------

def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="Score a model on labelled chips (IoU, F1, "
                                                    "precision, recall, accuracy).")
    parser.add_argument("--model", required=True,
                        help="SavedModel dir, TF Serving base path (latest version) or .onnx")
    parser.add_argument("--data", required=True, help="Dataset dir with images/ and masks/")
    parser.add_argument("--json", dest="json_out", help="Write the metrics JSON here")
    parser.add_argument("--threshold", type=float, default=None,
                        help="Decision threshold (default: the model's, else 0.5)")
    parser.add_argument("--convention", default="auto",
                        help="Reflectance convention of the images (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from tailseg.backends import load_predictor
    from tailseg.dataset import find_pairs, load_chips
    from tailseg.evaluate import evaluate_predictor

    predictor = load_predictor(args.model)
    pairs, unpaired = find_pairs(args.data)
    for reason in unpaired.values():
        logger.warning("skipping %s", reason)
    chips, excluded = load_chips(pairs, args.convention)
    if not chips:
        raise TailsegError(f"{args.data}: no usable chips ({len(excluded)} excluded)")
    threshold = args.threshold or predictor.metadata.get("threshold", 0.5)
    report = evaluate_predictor(predictor, chips, threshold, args.batch_size)
    report |= {"model": str(predictor.path), "backend": predictor.backend,
               "excluded": excluded | unpaired}
    _write_json(report, args.json_out)
    print(f"IoU {report['iou']:.4f}  F1 {report['f1']:.4f}  precision {report['precision']:.4f}"
          f"  recall {report['recall']:.4f}  accuracy {report['accuracy']:.4f}  "
          f"({report['n_chips']} chips)", file=sys.stderr)
    return 0


# --- registry --------------------------------------------------------------------------------

COMMANDS: list[Callable] = [_add_run, _add_evaluate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailseg", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except TailsegError as error:
        print(f"tailseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
