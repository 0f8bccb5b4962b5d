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

from tailseg.errors import ConfigError, TailsegError

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
                        help="ZenML run configuration with tailseg parameters "
                             "(default: %(default)s)")
    parser.add_argument("--overlay", default=None,
                        help="Stack overlay merged over --config, e.g. zenml.k8s.yaml")
    parser.add_argument("--pipeline", default="training", choices=["training"],
                        help="Pipeline to run (default: %(default)s)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from pipelines.runner import run_pipeline

    summary = run_pipeline(args.pipeline, args.config, args.overlay)
    print(json.dumps(summary, indent=2))
    export = summary.get("export", {})
    if export.get("exported"):
        print(f"\nModel version {export['version']} exported:\n  TF Serving: "
              f"{export['saved_model']}\n  ONNX:       {export['onnx']}", file=sys.stderr)
        return 0
    if "export" in summary:
        print("\nModel REJECTED by the gate, nothing exported: "
              + "; ".join(summary.get("reasons", [])), file=sys.stderr)
        return 3
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
    parser.add_argument("--plots", default=None, metavar="DIR",
                        help="Save PNGs here: precision-recall curve, best/worst chips, and "
                             "training curves when the model carries its history")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from tailseg.backends import load_predictor
    from tailseg.dataset import find_pairs, load_chips
    from tailseg.evaluate import evaluate_probabilities, predict_chips, threshold_sweep

    predictor = load_predictor(args.model)
    pairs, unpaired = find_pairs(args.data)
    for reason in unpaired.values():
        logger.warning("skipping %s", reason)
    chips, excluded = load_chips(pairs, args.convention)
    if not chips:
        raise TailsegError(f"{args.data}: no usable chips ({len(excluded)} excluded)")
    threshold = (args.threshold if args.threshold is not None
                 else predictor.metadata.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise TailsegError(f"--threshold must lie between 0 and 1, got {threshold}")
    probabilities = predict_chips(predictor, chips, args.batch_size)
    report = evaluate_probabilities(chips, probabilities, threshold)
    report["sweep"] = threshold_sweep(chips, probabilities, [i / 20 for i in range(1, 20)])
    if args.plots:
        _save_plots(Path(args.plots), chips, probabilities, report, predictor.metadata)
    report |= {"model": str(predictor.path), "backend": predictor.backend,
               "excluded": excluded | unpaired}
    _write_json(report, args.json_out)
    print(f"IoU {report['iou']:.4f}  F1 {report['f1']:.4f}  precision {report['precision']:.4f}"
          f"  recall {report['recall']:.4f}  accuracy {report['accuracy']:.4f}  "
          f"({report['n_chips']} chips)", file=sys.stderr)
    return 0


# --- serve -----------------------------------------------------------------------------------

def _add_serve(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="Serve a TF Serving model base path over TF "
                                                 "Serving's REST and gRPC APIs.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-base-path", help="Directory with integer version folders")
    source.add_argument("--model-config-file", help="A models.config (model_config_list)")
    parser.add_argument("--model-name", default="tailseg", help="With --model-base-path "
                                                                "(default: %(default)s)")
    parser.add_argument("--rest-port", type=int, default=8501, help="0: any free port "
                                                                    "(default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8500, help="0: any free port "
                                                                    "(default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="Bind address (default: "
                                                            "%(default)s; 0.0.0.0 exposes it)")
    parser.add_argument("--max-request-bytes", type=int, default=64 * 2**20,
                        help="Largest request accepted (default: %(default)s)")
    parser.add_argument("--poll-seconds", type=float, default=2.0,
                        help="How often new versions and config changes are looked for")
    parser.set_defaults(handler=_serve)


def _serve(args) -> int:
    from pydantic import ValidationError

    from tailseg.serving.server import ServeConfig, serve

    try:
        config = ServeConfig(
            model_base_path=args.model_base_path, model_config_file=args.model_config_file,
            model_name=args.model_name, host=args.host, rest_port=args.rest_port,
            grpc_port=args.grpc_port, max_request_bytes=args.max_request_bytes,
            poll_seconds=args.poll_seconds)
    except ValidationError as error:
        raise ConfigError(f"invalid serve options:\n{error}") from error
    serve(config)
    return 0


# --- predict / change ------------------------------------------------------------------------

def _add_predict_options(parser, model_required: bool = True) -> None:
    parser.add_argument("--model", required=model_required,
                        help="SavedModel dir, TF Serving base path (latest version), .onnx file, "
                        "or a model server URL (--backend serving)")
    parser.add_argument("--backend", choices=["tf", "onnx", "serving"], default=None,
                        help="Default: from the model path (.onnx -> onnx, else tf)")
    parser.add_argument("--window", type=int, default=1024, help="Window side (default: 1024)")
    parser.add_argument("--overlap", type=int, default=128,
                        help="Overlap of neighbouring windows (default: 128)")
    parser.add_argument("--margin", type=int, default=32,
                        help="Window border discarded where windows meet (default: 32)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="Windows per model call (default: from the backend)")
    parser.add_argument("--convention", default="auto",
                        help="Reflectance convention: auto, gdal, reflectance, dn, dn_offset")
    parser.add_argument("--threshold", type=float, default=None,
                        help="Decision threshold (default: the model's, else 0.5)")
    parser.add_argument("--min-area-ha", type=float, default=0.0,
                        help="Drop sites smaller than this (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar")


def _predict_config(args):
    from pydantic import ValidationError

    from tailseg.config import PredictConfig

    try:
        return PredictConfig(window=args.window, overlap=args.overlap, margin=args.margin,
                             batch_size=args.batch_size, convention=args.convention,
                             threshold=args.threshold, min_area_ha=args.min_area_ha,
                             overwrite=args.overwrite, progress=not args.no_progress)
    except ValidationError as error:
        raise ConfigError(f"invalid prediction options:\n{error}") from error


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="Map tailings over a whole scene: "
                                   "probability and mask COGs, site polygons (GeoJSON).")
    parser.add_argument("input", help="GeoTIFF with bands B2, B3, B4, any size and CRS")
    parser.add_argument("--out", required=True, help="Output folder")
    _add_predict_options(parser)
    parser.set_defaults(handler=_predict)


def _predict(args) -> int:
    from tailseg.predict import run_prediction

    result = run_prediction(args.input, args.model, args.out, args.backend, _predict_config(args))
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _add_change(subparsers) -> None:
    parser = subparsers.add_parser("change", help="Compare the tailings of two dates: sites that "
                                   "appeared, disappeared, grew or shrank.")
    parser.add_argument("before", help="<stem>_tailings.geojson, or a scene GeoTIFF with --model")
    parser.add_argument("after", help="<stem>_tailings.geojson, or a scene GeoTIFF with --model")
    parser.add_argument("--out", required=True, help="Output folder")
    parser.add_argument("--min-relative-change", type=float, default=0.1,
                        help="Smaller relative area changes are 'unchanged' (default: 0.1)")
    parser.add_argument("--min-change-ha", type=float, default=0.0,
                        help="Smaller area changes in hectares are 'unchanged' (default: 0)")
    _add_predict_options(parser, model_required=False)  # only scenes need a model
    parser.set_defaults(handler=_change)


def _change(args) -> int:
    from tailseg.change import detect_change
    from tailseg.config import ChangeConfig

    out = Path(args.out)
    sites = {}
    for key in ("before", "after"):
        path = Path(getattr(args, key))
        if path.suffix.lower() in (".tif", ".tiff"):
            if not args.model:
                raise TailsegError(f"{path}: a scene needs --model to be predicted first")
            from tailseg.predict import run_prediction

            result = run_prediction(path, args.model, out / key, args.backend,
                                    _predict_config(args))
            path = Path(result.outputs["tailings"])
        sites[key] = path
    name = f"{Path(args.before).stem}_to_{Path(args.after).stem}_change.geojson"
    config = ChangeConfig(min_relative_change=args.min_relative_change,
                          min_change_ha=args.min_change_ha)
    print(json.dumps(detect_change(sites["before"], sites["after"], out / name, config,
                                   overwrite=args.overwrite), indent=2))
    return 0


# --- stack / schedule ------------------------------------------------------------------------

def _add_stack(subparsers) -> None:
    parser = subparsers.add_parser("stack", help="ZenML stacks as code (infra/zenml/*.yaml): "
                                                 "show or register local/kubernetes/kubeflow.")
    parser.add_argument("action", choices=["show", "register"])
    parser.add_argument("names", nargs="*", help="Stack files by short name (default: all)")
    parser.add_argument("--dir", default=None, help="Stack folder (default: infra/zenml)")
    parser.add_argument("--activate", action="store_true", help="Activate the (last) stack")
    parser.set_defaults(handler=_stack)


def _stack(args) -> int:
    from tailseg.stacks import STACK_DIR, load_stacks

    stacks = load_stacks(args.dir or STACK_DIR)
    unknown = sorted(set(args.names) - set(stacks))
    if unknown:
        raise TailsegError(f"unknown stack(s) {unknown}; the files define {sorted(stacks)}")
    chosen = {name: stacks[name] for name in (args.names or stacks)}
    if args.action == "show":
        print(json.dumps({name: stack.model_dump() for name, stack in chosen.items()}, indent=2))
        return 0
    from zenml.client import Client

    client = Client()
    for stack in chosen.values():
        ids = {}
        for kind, (component,) in stack.components.items():
            try:
                existing = client.get_stack_component(kind, component.name)
            except KeyError:
                try:
                    existing = client.create_stack_component(
                        component.name, component.flavor, kind, component.configuration)
                except ImportError as error:
                    raise TailsegError(
                        f"{kind} {component.name!r} ({component.flavor}) needs the "
                        f"{error.name!r} package: `zenml integration install "
                        f"{component.flavor}`") from error
            else:
                if existing.flavor_name != component.flavor:
                    raise TailsegError(f"{kind} {component.name!r} exists with flavor "
                                       f"{existing.flavor_name!r}, not {component.flavor!r}")
                if existing.configuration != component.configuration:
                    existing = client.update_stack_component(
                        component.name, kind, configuration=component.configuration)
            ids[kind] = existing.id
        try:
            current = client.get_stack(stack.stack_name)
        except KeyError:
            client.create_stack(stack.stack_name, components=ids)
        else:
            if {kind.value: items[0].id for kind, items in current.components.items()} != ids:
                client.update_stack(stack.stack_name, component_updates={
                    kind: [id_] for kind, id_ in ids.items()})
        print(f"registered stack {stack.stack_name!r}: " + ", ".join(
            f"{kind}={component[0].flavor}" for kind, component in stack.components.items()))
        if args.activate:
            client.activate_stack(stack.stack_name)
    return 0


def _add_schedule(subparsers) -> None:
    parser = subparsers.add_parser("schedule", help="Validate (and submit) the scheduled "
                                                    "retraining of a cluster overlay.")
    parser.add_argument("--config", default="zenml.yaml", help="Base run configuration")
    parser.add_argument("--overlay", default=None,
                        help="Cluster overlay merged over --config, e.g. zenml.k8s.yaml")
    parser.add_argument("--orchestrator", default=None,
                        help="Check for this orchestrator flavor instead of the active "
                             "ZenML stack's (kubernetes, kubeflow, local)")
    parser.add_argument("--submit", action="store_true",
                        help="Submit the scheduled pipeline to the active stack")
    parser.set_defaults(handler=_schedule)


def _schedule(args) -> int:
    import tempfile

    import yaml

    from tailseg.config import load_run_yaml
    from tailseg.schedule import schedule_summary
    from tailseg.stacks import merge_run_configs

    merged = load_run_yaml(args.config)
    if args.overlay:
        merged = merge_run_configs(merged, load_run_yaml(args.overlay))
    flavor = args.orchestrator
    if flavor is None or args.submit:
        from zenml.client import Client

        active = Client().active_stack_model.components["orchestrator"][0].flavor_name
        if flavor not in (None, active):
            raise TailsegError(f"--orchestrator {flavor} but the active stack runs {active}")
        flavor = active
    summary = schedule_summary(merged, flavor, args.overlay or args.config)
    print(json.dumps(summary, indent=2))
    if args.submit:
        from pipelines.runner import run_pipeline

        # Beside the base file, so its relative paths still resolve.
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=".scheduled-",
                                         dir=Path(args.config).resolve().parent) as handle:
            yaml.safe_dump(merged, handle, sort_keys=False)
            handle.flush()
            run_pipeline("training", handle.name)
    return 0


# --- validate --------------------------------------------------------------------------------

def _add_validate(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate", help="Validate a dataset with Great Expectations; exit 0 when usable, 1 when "
                         "not. Invalid chips are listed with their failed checks.")
    parser.add_argument("data_dir", help="Dataset dir with images/ and masks/")
    parser.add_argument("--report", required=True, help="Write the JSON report here")
    parser.add_argument("--html", help="Also write the rendered GX validation results here")
    parser.add_argument("--config", help="YAML file with a 'validation:' mapping (found at any "
                                         "depth up to 3, e.g. in zenml.yaml); default settings "
                                         "otherwise")
    parser.add_argument("--convention", default="auto",
                        help="Reflectance convention of the images (default: %(default)s)")
    parser.add_argument("--previous-stats", help="An earlier report JSON (or its band_stats) for "
                                                 "the band drift warning")
    parser.set_defaults(handler=_validate)


def _find_section(mapping: dict, key: str, depth: int = 3) -> dict | None:
    if key in mapping:
        return mapping[key]
    children = [v for v in mapping.values() if isinstance(v, dict)] if depth > 1 else []
    return next((found for child in children
                 if (found := _find_section(child, key, depth - 1)) is not None), None)


def _validate(args) -> int:
    from pydantic import ValidationError

    from tailseg.config import load_run_yaml
    from tailseg.validation import ValidationConfig, validate_dataset, write_reports

    if not args.verbose:  # GX logs its start-up at INFO, hundreds of lines.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    section = _find_section(load_run_yaml(args.config), "validation") if args.config else None
    try:
        config = ValidationConfig.model_validate(section or {})
    except ValidationError as error:
        raise ConfigError(f"{args.config}: invalid validation settings:\n{error}") from error
    previous = None
    if args.previous_stats:
        try:
            previous = json.loads(Path(args.previous_stats).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"{args.previous_stats}: not a readable JSON report ({error})"
                              ) from error
        previous = previous.get("band_stats", previous)
    result = validate_dataset(args.data_dir, config, args.convention, previous)
    write_reports(result, args.report, args.html)
    for chip_id, reasons in sorted(result.quarantined.items()):
        for reason in reasons:
            print(f"quarantined {chip_id} [{reason['check']}]: {reason['message']}",
                  file=sys.stderr)
    for failure in result.dataset_failures + result.warnings:
        print(f"{failure['severity']} [{failure['check']}]: {failure['message']}", file=sys.stderr)
    print(f"{args.data_dir}: {'usable' if result.usable else 'NOT usable'}; "
          f"{len(result.valid_ids)} valid, {len(result.quarantined)} quarantined; report "
          f"{args.report}", file=sys.stderr)
    return 0 if result.usable else 1


def _save_plots(folder: Path, chips, probabilities, report: dict, metadata: dict) -> None:
    from tailseg import plots

    folder.mkdir(parents=True, exist_ok=True)
    figures = plots.evaluation_figures(chips, probabilities, report, report["sweep"])
    if metadata.get("training_history"):
        figures["training_curves"] = plots.training_curves(metadata["training_history"])
    for name, png in figures.items():
        (folder / f"{name}.png").write_bytes(png)
    print(f"plots: {', '.join(sorted(figures))} in {folder}", file=sys.stderr)


# --- registry --------------------------------------------------------------------------------

COMMANDS: list[Callable] = [_add_run, _add_evaluate, _add_predict, _add_change, _add_serve,
                            _add_stack, _add_schedule, _add_validate]


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
