"""The `tailseg` command line. Each sub-command is a thin wrapper over library functions.

Sub-commands register in COMMANDS; heavy imports (TensorFlow) happen inside handlers so
`tailseg --help` stays fast. The ZenML commands (run, stack, schedule) live in pipelines/cli.py,
which is the installed `tailseg` entry point: the library imports no ZenML.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tailseg import runtime
from tailseg.constants import MIN_SITE_AREA_HA
from tailseg.errors import ConfigError, OutputExistsError, TailsegError

logger = logging.getLogger("tailseg")


def _write_json(payload: dict, path: str | None) -> None:
    text = json.dumps(payload, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    else:
        print(text)


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
    parser.add_argument("--min-site-pixels", type=int, default=0,
                        help="Site metrics ignore predicted sites smaller than this "
                             "(default: %(default)s)")
    parser.add_argument("--min-site-ha", type=float, default=MIN_SITE_AREA_HA,
                        help="Site metrics ignore predicted sites smaller than this area, as "
                             "`predict` drops them (default: %(default)s; 0 keeps all)")
    parser.add_argument("--tta", action="store_true",
                        help="Test-time augmentation: average the predictions of 4 flips")
    parser.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from tailseg.backends import load_predictor
    from tailseg.dataset import find_pairs, load_chips
    from tailseg.evaluate import evaluate_probabilities, predict_chips, threshold_sweep
    from tailseg.sites import evaluate_sites, raster_row_areas, site_line
    from tailseg.tta import flip_tta

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
    probabilities = predict_chips(flip_tta(predictor) if args.tta else predictor, chips,
                                  args.batch_size)
    report = evaluate_probabilities(chips, probabilities, threshold) | {"tta": args.tta}
    report["sweep"] = threshold_sweep(chips, probabilities, [i / 20 for i in range(1, 20)])
    masks = {pair.chip_id: pair.mask for pair in pairs}
    report["sites"] = evaluate_sites(chips, probabilities, threshold,
                                     [raster_row_areas(masks[c.chip_id]) for c in chips],
                                     min_site_pixels=args.min_site_pixels,
                                     min_site_ha=args.min_site_ha)
    if args.plots:
        _save_plots(Path(args.plots), chips, probabilities, report, predictor.metadata)
    report |= {"model": str(predictor.path), "backend": predictor.backend,
               "excluded": excluded | unpaired}
    _write_json(report, args.json_out)
    print(f"IoU {report['iou']:.4f}  F1 {report['f1']:.4f}  precision {report['precision']:.4f}"
          f"  recall {report['recall']:.4f}  accuracy {report['accuracy']:.4f}  "
          f"({report['n_chips']} chips)", file=sys.stderr)
    print(site_line(report["sites"]), file=sys.stderr)
    return 0


# --- cv --------------------------------------------------------------------------------------

def _add_cv(subparsers) -> None:
    parser = subparsers.add_parser("cv", help="K-fold cross-validation: one model per fold, "
                                              "per-fold and mean +- std IoU/F1, pooled IoU.")
    parser.add_argument("--config", default="zenml.yaml",
                        help="Run configuration with tailseg parameters (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="Number of folds (default: 5)")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="Write the report here (default: print it)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="Override training.epochs for every fold")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="Override training.max_minutes (the budget of each fold)")
    parser.add_argument("--tta", action="store_true",
                        help="Score with test-time augmentation (mean of 4 flips)")
    parser.set_defaults(handler=_cv)


def _cv(args) -> int:
    from tailseg.config import load_run_yaml, parse_config
    from tailseg.crossval import cross_validate
    from tailseg.workflow import resolve_paths

    path = Path(args.config).resolve()
    parameters = (load_run_yaml(path).get("parameters") or {}).get("config") or {}
    training = {k: v for k, v in (("epochs", args.epochs), ("max_minutes", args.max_minutes))
                if v is not None}
    if training:
        parameters = {**parameters, "training": {**parameters.get("training", {}), **training}}
    config = resolve_paths(parse_config(parameters, str(path)), path.parent)
    try:
        report = cross_validate(config, args.folds, tta=args.tta)
    except ValueError as error:
        raise ConfigError(f"tailseg cv: {error}") from error
    _write_json(report, args.json_out)
    mean, std, pooled = report["mean"], report["std"], report["pooled"]
    print(f"{args.folds}-fold cross-validation over {report['n_chips']} chips: IoU "
          f"{mean['iou']:.4f} +- {std['iou']:.4f}, F1 {mean['f1']:.4f} +- {std['f1']:.4f}; "
          f"pooled IoU {pooled['iou']:.4f}, F1 {pooled['f1']:.4f}", file=sys.stderr)
    return 0


# --- serve -----------------------------------------------------------------------------------

def _add_serve(subparsers) -> None:
    from tailseg.serving.flags import add_serve_arguments

    parser = subparsers.add_parser("serve", help="Serve a TF Serving model base path over TF "
                                                 "Serving's REST and gRPC APIs (accepts "
                                                 "tensorflow_model_server's flags).")
    add_serve_arguments(parser)
    parser.set_defaults(handler=_serve)


def _serve(args) -> int:
    from pydantic import ValidationError

    from tailseg.serving.flags import serve_config_kwargs
    from tailseg.serving.server import ServeConfig, serve

    try:
        config = ServeConfig(**serve_config_kwargs(args))
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
    parser.add_argument("--overlap", type=int, default=None,
                        help="Overlap of neighbouring windows (default: 2 x margin + 32)")
    parser.add_argument("--margin", type=int, default=None,
                        help="Window border discarded where windows meet (default: the model's "
                        "receptive-field radius, measured; 112 for the depth-4 U-Net)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="Windows per model call (default: from the backend)")
    parser.add_argument("--convention", default="auto",
                        help="Reflectance convention: auto, gdal, reflectance, dn, dn_offset "
                        "(checked against Sentinel-2 reflectance before prediction)")
    parser.add_argument("--force", action="store_true",
                        help="Predict even if the convention gives implausible reflectance")
    parser.add_argument("--bands", default=None,
                        help="The file's band order, e.g. B4,B3,B2 for an RGB export "
                        "(default: B2,B3,B4; a warning when the file has no band descriptions)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="Decision threshold (default: the model's, else 0.5)")
    parser.add_argument("--min-area-ha", type=float, default=None,
                        help="Drop sites smaller than this, in predict and change (default: 0.5, "
                        "50 Sentinel-2 pixels; see docs/prediction.md)")
    parser.add_argument("--format", choices=["geojson", "gpkg"], default="geojson",
                        help="Site polygons as GeoJSON (default) or GeoPackage")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar")


def _predict_config(args):
    from pydantic import ValidationError

    from tailseg.config import PredictConfig
    from tailseg.raster import parse_bands

    given = {"min_area_ha": args.min_area_ha} if args.min_area_ha is not None else {}
    try:
        return PredictConfig(window=args.window, overlap=args.overlap, margin=args.margin,
                             batch_size=args.batch_size, convention=args.convention,
                             force=args.force, threshold=args.threshold,
                             bands=parse_bands(args.bands) if args.bands else None,
                             vector_format=args.format, overwrite=args.overwrite,
                             progress=not args.no_progress, **given)
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
    """Everything is checked before the first scene is predicted (both scenes, the options, the
    outputs); a failure after it removes the predictions this run wrote."""
    from pydantic import ValidationError

    from tailseg.change import detect_change
    from tailseg.config import ChangeConfig

    out = Path(args.out)
    given = {"min_area_ha": args.min_area_ha} if args.min_area_ha is not None else {}
    try:
        config = ChangeConfig(min_relative_change=args.min_relative_change,
                              min_change_ha=args.min_change_ha, **given)
    except ValidationError as error:
        raise ConfigError(f"invalid change options:\n{error}") from error
    name = f"{Path(args.before).stem}_to_{Path(args.after).stem}_change.geojson"
    if (out / name).exists() and not args.overwrite:
        raise OutputExistsError(f"{out / name}: already exists; pass --overwrite to replace it")
    inputs = {key: Path(getattr(args, key)) for key in ("before", "after")}
    scenes = {key: path for key, path in inputs.items()
              if path.suffix.lower() in (".tif", ".tiff")}
    sites = {key: path for key, path in inputs.items() if key not in scenes}
    written: list[Path] = []
    if scenes:
        from tailseg.change import read_sites
        from tailseg.predict import check_scene, load_model, predict_scene

        for path in sites.values():  # a GeoJSON beside a scene: read before predicting it
            read_sites(path)

        if not args.model:
            raise TailsegError(f"{next(iter(scenes.values()))}: a scene needs --model to be "
                               "predicted first")
        scene_config = _predict_config(args).model_copy(update={"vector_format": "geojson"})
        for key, path in scenes.items():
            check_scene(path, out / key, scene_config)
        predictor = load_model(args.model, args.backend)
    try:
        for key, path in scenes.items():
            result = predict_scene(path, predictor, out / key, scene_config)
            written += [Path(p) for p in result.outputs.values()]
            sites[key] = Path(result.outputs["tailings"])  # change compares GeoJSONs
        summary = detect_change(sites["before"], sites["after"], out / name, config,
                                overwrite=args.overwrite)
    except BaseException:
        if not args.overwrite:  # with --overwrite an earlier output may have been replaced
            for path in written:
                path.unlink(missing_ok=True)
        raise
    print(json.dumps(summary, indent=2))
    return 0


# --- promote ---------------------------------------------------------------------------------

def _add_promote(subparsers) -> None:
    parser = subparsers.add_parser(
        "promote", help="Pin the version production serves (and labels stable) in its "
                        "models.config; an older version rolls back. Apply with kubectl apply -k.")
    parser.add_argument("version", type=int, help="Exported version (integer directory)")
    parser.add_argument("--models-config", default="infra/k8s/overlays/production/models.config",
                        help="TF Serving config to edit (default: %(default)s)")
    parser.add_argument("--model-name", default="tailseg")
    parser.add_argument("--repository", help="The model repository (export_dir), if mounted "
                                             "here: the version must exist in it")
    parser.set_defaults(handler=_promote)


def _promote(args) -> int:
    from tailseg.delivery import promote_version

    previous = promote_version(args.models_config, args.model_name, args.version,
                               args.repository)
    print(json.dumps({"models_config": args.models_config, "stable": args.version,
                      "previous": previous}, indent=2))
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


# --- split -----------------------------------------------------------------------------------

def _add_split(subparsers) -> None:
    parser = subparsers.add_parser(
        "split", help="Print which chips are train, validation and test: a pure function of "
                      "each chip id and the seed, so adding chips never moves existing ones.")
    parser.add_argument("data_dir", help="Dataset dir with images/ and masks/")
    parser.add_argument("--json", help="Write the assignment here instead of printing it")
    parser.add_argument("--config", help="ZenML run configuration whose parameters.config.data "
                                         "gives seed and fractions (default: DataConfig's)")
    parser.set_defaults(handler=_split)


def _split(args) -> int:
    from tailseg.config import DataConfig, load_run_yaml, parse_config
    from tailseg.dataset import find_pairs
    from tailseg.split import PARTS, split_record

    data = DataConfig()
    if args.config:
        parameters = (load_run_yaml(args.config).get("parameters") or {}).get("config") or {}
        data = parse_config(parameters, args.config).data
    pairs, unpaired = find_pairs(args.data_dir)
    for reason in unpaired.values():
        print(f"left out (unpaired): {reason}", file=sys.stderr)
    record = split_record([p.chip_id for p in pairs], data, source=args.data_dir)
    _write_json({**record, "data_dir": str(args.data_dir)}, args.json)
    print(f"{args.data_dir}: " + ", ".join(f"{part} {len(record[part])}" for part in PARTS)
          + f" (seed {data.seed})", file=sys.stderr)
    return 0


# --- registry --------------------------------------------------------------------------------

# The library's commands; pipelines/cli.py adds run, stack and schedule (ZenML) to make the
# installed `tailseg` command.
COMMANDS: list[Callable] = [_add_evaluate, _add_cv, _add_predict, _add_change, _add_serve,
                            _add_promote, _add_validate, _add_split]


def build_parser(extra: Sequence[Callable] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailseg", description=__doc__.splitlines()[0])
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="Every log record of every library, with its level and logger")
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="Only warnings, errors and the results")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (*extra, *COMMANDS):
        add(subparsers)
    return parser


def _uses_tensorflow(args) -> bool:
    """Whether the command loads TensorFlow (imported first then, without its start-up lines).
    A new command loads it unless listed here or it says otherwise (a `uses_tensorflow`
    default: a function of its arguments)."""
    if callable(decides := getattr(args, "uses_tensorflow", None)):
        return bool(decides(args))
    match args.command:
        case "validate" | "split" | "promote":
            return False
        case "evaluate" | "predict" | "change":
            model = str(args.model or "")
            return (bool(model) and getattr(args, "backend", None) in (None, "tf")
                    and "://" not in model and not model.lower().endswith(".onnx"))
    return True


def main(argv: list[str] | None = None, extra: Sequence[Callable] = ()) -> int:
    """Run one command: the library's, plus those that `extra` adds (see build_parser). A
    command may name a `before` default, called after the console is set up and before its
    handler (e.g. to import ZenML, which adds a console handler of its own)."""
    args = build_parser(extra).parse_args(argv)
    runtime.apply_tensorflow_environment()
    runtime.configure_console("verbose" if args.verbose else "quiet" if args.quiet else "normal")
    if _uses_tensorflow(args):
        runtime.import_tensorflow_quietly()
    if callable(before := getattr(args, "before", None)):
        before(args)
    try:
        return int(args.handler(args) or 0)
    except (TailsegError, OSError) as error:  # OSError: a file or folder problem, not a bug
        if args.verbose:  # where it was raised, for a bug report
            logger.error("tailseg %s failed", args.command, exc_info=error)
        print(f"tailseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # SIGINT, or SIGTERM during prediction
        number = getattr(interrupt, "signal", signal.SIGINT)
        kept = ("; temporary files removed, existing outputs kept"
                if args.command in ("predict", "change") else "")
        print(f"tailseg {args.command}: interrupted by {signal.Signals(number).name}{kept}",
              file=sys.stderr)
        return 128 + number


if __name__ == "__main__":
    sys.exit(main())
