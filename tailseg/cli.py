"""The `tailseg` command line. Each sub-command is a thin wrapper over library functions.

Sub-commands register in COMMANDS; heavy imports (TensorFlow) happen inside handlers so
`tailseg --help` stays fast. The ZenML commands (run, stack, schedule) live in pipelines/cli.py,
which is the installed `tailseg` entry point: the library imports no ZenML.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tailseg import runtime
from tailseg.constants import MIN_SITE_AREA_HA
from tailseg.errors import ConfigError, OutputExistsError, OutputWriteError, TailsegError

logger = logging.getLogger("tailseg")


# --- option values ---------------------------------------------------------------------------

def _number(convert: Callable[[str], int | float], minimum: float, strict: bool = False,
            maximum: float | None = None) -> Callable[[str], int | float]:
    """An argparse type: a finite number at least minimum (above it when strict) and below
    maximum, so 0, -1, nan and inf fail as a usage error naming the option."""
    kind = "a whole number" if convert is int else "a number"
    bounds = (f"above {minimum}" if strict else f"at least {minimum}") + (
        f" and below {maximum}" if maximum is not None else "")

    def parse(text: str) -> int | float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if (not math.isfinite(value) or value < minimum or (strict and value == minimum)
                or (maximum is not None and value >= maximum)):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {kind} {bounds}")
        return value

    return parse


_positive_int = _number(int, 1)
_count = _number(int, 0)
_positive = _number(float, 0, strict=True)
_non_negative = _number(float, 0)
_probability = _number(float, 0, strict=True, maximum=1)


# --- outputs ---------------------------------------------------------------------------------

def _add_overwrite(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="Replace existing outputs")


def _protected(inputs: dict[str, str | Path | None]) -> dict[str, Path]:
    """The inputs no output may replace or lie inside, resolved; a model file in a version
    folder (exports/onnx/<name>/<v>/model.onnx) protects the whole version."""
    protected = {}
    for label, path in inputs.items():
        if not path or "://" in str(path):  # absent, or a model server
            continue
        path = Path(path).resolve()
        protected[label] = path
        if path.is_file() and path.parent.name.isdigit():
            protected[f"{label} version"] = path.parent
    return protected


def _check_outputs(outputs: list[tuple[str, str | Path | None]], overwrite: bool,
                   inputs: dict[str, str | Path | None]) -> None:
    """Refuse, before anything is computed or written, every output that would replace or
    land inside an input (the model, the dataset, the configuration), replace an existing
    file without --overwrite, replace a folder, or cannot be created.

    Raises:
        OutputExistsError: a file exists and overwrite is False.
        OutputWriteError: any other reason; the message names the option and the path.
    """
    protected, seen = _protected(inputs), {}
    for option, path in outputs:
        if not path:
            continue
        path = Path(path)
        resolved = path.resolve()
        for label, guarded in protected.items():
            if resolved == guarded or guarded in resolved.parents:
                raise OutputWriteError(f"{option} {path}: is or lies inside the {label} "
                                       f"{guarded}; write outputs elsewhere")
        if resolved in seen:
            raise OutputWriteError(f"{option} {path}: also the target of {seen[resolved]}; "
                                   "give each output its own file")
        seen[resolved] = option
        if path.is_dir():
            raise OutputWriteError(f"{option} {path}: is a folder; name a file")
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{option} {path}: already exists; pass --overwrite to "
                                    "replace it")
        folder = next(parent for parent in path.absolute().parents if parent.exists())
        if not folder.is_dir():
            raise OutputWriteError(f"{option} {path}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputWriteError(f"{option} {path}: folder {folder} is not writable")


def _write_outputs(files: dict[Path, str | bytes]) -> None:
    """Write each file atomically; if one fails, the files this call created are removed."""
    from tailseg.textfile import write_atomically

    created: list[Path] = []
    try:
        for path, content in files.items():
            existed = path.exists()
            write_atomically(path, content)
            if not existed:
                created.append(path)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise


def _json_text(payload: dict) -> str:
    return json.dumps(payload, indent=2) + "\n"


def _write_json(payload: dict, path: str | None) -> None:
    """Write the JSON to path (checked beforehand with _check_outputs), or print it."""
    if path:
        _write_outputs({Path(path): _json_text(payload)})
    else:
        print(_json_text(payload), end="")


# --- evaluate --------------------------------------------------------------------------------

def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="Score a model on labelled chips (IoU, F1, "
                                                    "precision, recall, accuracy).")
    parser.add_argument("--model", required=True,
                        help="SavedModel dir, TF Serving base path (latest version) or .onnx")
    parser.add_argument("--data", required=True, help="Dataset dir with images/ and masks/")
    parser.add_argument("--json", dest="json_out", help="Write the metrics JSON here")
    parser.add_argument("--threshold", type=_probability, default=None,
                        help="Decision threshold (default: the model's, else 0.5)")
    parser.add_argument("--convention", default="auto",
                        help="Reflectance convention of the images (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=4,
                        help="Chips per model call (default: %(default)s)")
    parser.add_argument("--plots", default=None, metavar="DIR",
                        help="Save PNGs here: precision-recall curve, best/worst chips, and "
                             "training curves when the model carries its history")
    parser.add_argument("--min-site-pixels", type=_count, default=0,
                        help="Site metrics ignore predicted sites smaller than this "
                             "(default: %(default)s)")
    parser.add_argument("--min-site-ha", type=_non_negative, default=MIN_SITE_AREA_HA,
                        help="Site metrics ignore predicted sites smaller than this area, as "
                             "`predict` drops them (default: %(default)s; 0 keeps all)")
    parser.add_argument("--tta", action="store_true",
                        help="Test-time augmentation: average the predictions of 4 flips")
    parser.add_argument("--overlaps", choices=["merge", "ignore"], default=None,
                        help="merge: score each chip against its own labels and those of the "
                             "chips sharing its ground (tailseg/overlaps.py); ignore: the masks "
                             "as stored (default: as the model was trained, data.overlaps in its "
                             "metadata: merge, or ignore for group/ignore; merge without it)")
    _add_overwrite(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from tailseg.backends import load_predictor
    from tailseg.dataset import find_pairs, load_chips
    from tailseg.evaluate import evaluate_probabilities, predict_chips, threshold_sweep
    from tailseg.overlaps import apply_overlaps
    from tailseg.sites import evaluate_sites, raster_row_areas, site_line
    from tailseg.tta import flip_tta

    inputs = {"model": args.model, "dataset": args.data}
    plots = Path(args.plots) if args.plots else None
    # Checked now with the one plot always drawn, and again with all of them before writing.
    _check_outputs([("--json", args.json_out),
                    ("--plots", plots and plots / "precision_recall_curve.png")],
                   args.overwrite, inputs)
    predictor = load_predictor(args.model)
    pairs, unpaired = find_pairs(args.data)
    for reason in unpaired.values():
        logger.warning("skipping %s", reason)
    chips, excluded = load_chips(pairs, args.convention)
    if not chips:
        reasons = "".join(f"\n  {reason}" for reason in list(excluded.values())[:5])
        raise TailsegError(f"{args.data}: no usable chips ({len(excluded)} excluded){reasons}")
    overlaps = args.overlaps or ("ignore" if predictor.metadata.get("overlaps") in
                                 ("group", "ignore") else "merge")
    chips, _ = apply_overlaps(chips, pairs, overlaps)
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
    report |= {"model": str(predictor.path), "backend": predictor.backend,
               "excluded": excluded | unpaired, "overlaps": overlaps}
    outputs = [("--json", Path(args.json_out), _json_text(report))] if args.json_out else []
    if plots:
        figures = _figures(chips, probabilities, report, predictor.metadata)
        outputs += [("--plots", plots / f"{name}.png", png) for name, png in figures.items()]
    _check_outputs([(option, path) for option, path, _ in outputs], args.overwrite, inputs)
    _write_outputs({path: content for _, path, content in outputs})
    if not args.json_out:
        print(_json_text(report), end="")
    if plots:
        print(f"plots: {', '.join(sorted(figures))} in {plots}", file=sys.stderr)
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
    parser.add_argument("--folds", type=_number(int, 2), default=5,
                        help="Number of folds (default: 5)")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="Write the report here (default: print it)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="Override training.epochs for every fold")
    parser.add_argument("--max-minutes", type=_positive, default=None,
                        help="Override training.max_minutes (the budget of each fold)")
    parser.add_argument("--tta", action="store_true",
                        help="Score with test-time augmentation (mean of 4 flips)")
    _add_overwrite(parser)
    parser.set_defaults(handler=_cv)


def _cv(args) -> int:
    from tailseg.config import load_run_yaml, parse_config, run_parameters
    from tailseg.crossval import cross_validate
    from tailseg.workflow import resolve_paths

    path = Path(args.config).resolve()
    parameters = run_parameters(load_run_yaml(path), path)
    training = {k: v for k, v in (("epochs", args.epochs), ("max_minutes", args.max_minutes))
                if v is not None}
    given = parameters.get("training") or {}
    if training and isinstance(given, dict):  # anything else: parse_config names the file
        parameters = {**parameters, "training": {**given, **training}}
    config = resolve_paths(parse_config(parameters, str(path)), path.parent)
    _check_outputs([("--json", args.json_out)], args.overwrite,
                   {"configuration": path, "dataset": config.data.data_dir,
                    "model repository": Path(config.export.export_dir) / "serving",
                    "ONNX model repository": Path(config.export.export_dir) / "onnx"})
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
    for key in ("before", "after"):
        parser.add_argument(f"--{key}-mask", default=None,
                            help=f"The {key.upper()} date's <stem>_mask.tif (255 = not "
                            "observed), so that only what both dates observed is compared "
                            "(default: the one beside a <stem>_tailings.geojson; a scene's own)")
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
    # Folders this run may create (out/before, out/after, out and its missing parents), to
    # take back on failure when empty.
    created = [folder for folder in (*(out / key for key in scenes), out, *out.absolute().parents)
               if not folder.exists()]
    masks = {key: getattr(args, f"{key}_mask") for key in inputs}
    for key in scenes:
        if masks[key]:
            raise ConfigError(f"--{key}-mask: {key.upper()} is a scene, whose own mask is "
                              "used; pass a mask only with a <stem>_tailings.geojson")
    if scenes:
        from tailseg.change import read_features, read_footprint
        from tailseg.predict import check_scene, load_model, predict_scene

        for path in sites.values():  # a GeoJSON beside a scene: read before predicting it
            read_features(path)
        for mask in masks.values():
            if mask:
                read_footprint(mask)

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
            masks[key] = result.outputs["mask"]
        summary = detect_change(sites["before"], sites["after"], out / name, config,
                                overwrite=args.overwrite, before_mask=masks["before"],
                                after_mask=masks["after"])
    except BaseException:
        if not args.overwrite:  # with --overwrite an earlier output may have been replaced
            for path in written:
                path.unlink(missing_ok=True)
        for folder in created:  # deepest first; a folder something else wrote into stays
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    print(json.dumps(summary, indent=2))
    return 0


# --- promote ---------------------------------------------------------------------------------

def _add_promote(subparsers) -> None:
    parser = subparsers.add_parser(
        "promote", help="Pin the version production serves (and labels stable) in its "
                        "models.config; an older version rolls back. Apply with kubectl apply -k.")
    parser.add_argument("version", type=_positive_int,
                        help="Exported version (integer directory)")
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
    _add_overwrite(parser)
    parser.set_defaults(handler=_validate)


def _find_section(mapping: dict, key: str, depth: int = 3) -> dict | None:
    if key in mapping:
        return mapping[key]
    children = [v for v in mapping.values() if isinstance(v, dict)] if depth > 1 else []
    return next((found for child in children
                 if (found := _find_section(child, key, depth - 1)) is not None), None)


def _previous_stats(path: str) -> dict:
    """The band statistics of an earlier report (or the statistics alone), as a mapping."""
    try:
        previous = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        raise ConfigError(f"{path}: not a readable JSON report ({error})") from error
    if isinstance(previous, dict):
        previous = previous.get("band_stats", previous)
    if not isinstance(previous, dict):
        raise ConfigError(f"{path}: expected a JSON object (a `tailseg validate` report or its "
                          f"band_stats), got {type(previous).__name__}")
    return previous


def _validate(args) -> int:
    from pydantic import ValidationError

    from tailseg.config import load_run_yaml
    from tailseg.validation import ValidationConfig, validate_dataset, write_reports

    _check_outputs([("--report", args.report), ("--html", args.html)], args.overwrite,
                   {"dataset": args.data_dir, "configuration": args.config})
    if not args.verbose:  # GX logs its start-up at INFO, hundreds of lines.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    section = _find_section(load_run_yaml(args.config), "validation") if args.config else None
    try:
        config = ValidationConfig.model_validate(section or {})
    except ValidationError as error:
        raise ConfigError(f"{args.config}: invalid validation settings:\n{error}") from error
    previous = None
    if args.previous_stats:
        previous = _previous_stats(args.previous_stats)
    result = validate_dataset(args.data_dir, config, args.convention, previous)
    created = [Path(p) for p in (args.report, args.html) if p and not Path(p).exists()]
    try:
        write_reports(result, args.report, args.html)
    except BaseException:  # e.g. the HTML failed after the JSON was written
        for path in created:
            path.unlink(missing_ok=True)
        raise
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


def _figures(chips, probabilities, report: dict, metadata: dict) -> dict[str, bytes]:
    """The evaluation's PNGs by name, in memory (written with the JSON, after every check)."""
    from tailseg import plots

    figures = plots.evaluation_figures(chips, probabilities, report, report["sweep"])
    if metadata.get("training_history"):
        figures["training_curves"] = plots.training_curves(metadata["training_history"])
    return figures


# --- split -----------------------------------------------------------------------------------

def _add_split(subparsers) -> None:
    parser = subparsers.add_parser(
        "split", help="Print which chips are train, validation and test: a pure function of "
                      "each group's key (chips sharing ground go together) and the seed, so "
                      "adding chips moves no existing chip but those a new chip overlaps.")
    parser.add_argument("data_dir", help="Dataset dir with images/ and masks/")
    parser.add_argument("--json", help="Write the assignment here instead of printing it")
    parser.add_argument("--config", help="ZenML run configuration whose parameters.config.data "
                                         "gives seed and fractions (default: DataConfig's)")
    _add_overwrite(parser)
    parser.set_defaults(handler=_split)


def _split(args) -> int:
    from tailseg.config import DataConfig, load_run_yaml, parse_config, run_parameters
    from tailseg.dataset import find_pairs
    from tailseg.split import PARTS, split_record

    _check_outputs([("--json", args.json)], args.overwrite,
                   {"dataset": args.data_dir, "configuration": args.config})
    data = DataConfig()
    if args.config:
        parameters = run_parameters(load_run_yaml(args.config), args.config)
        data = parse_config(parameters, args.config).data
    pairs, unpaired = find_pairs(args.data_dir)
    for reason in unpaired.values():
        print(f"left out (unpaired): {reason}", file=sys.stderr)
    groups = {}
    if data.overlaps != "ignore":  # chips sharing ground stay in one part
        from tailseg.overlaps import overlap_groups, read_footprints

        groups = overlap_groups(read_footprints(pairs))
    record = split_record([p.chip_id for p in pairs], data, source=args.data_dir,
                          groups=groups)
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
