"""The installed `tailseg` command: the library's commands (tailseg/cli.py) plus those that
run ZenML: `run` (the training pipeline), `stack` (stacks as code) and `schedule` (scheduled
retraining). ZenML is imported inside the handlers, so `tailseg --help` stays fast.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from tailseg import cli, runtime
from tailseg.cli import _check_outputs, _write_json
from tailseg.errors import TailsegError


def _quiet_zenml(args) -> None:
    """Import ZenML now: it adds a console handler of its own, removed next."""
    import zenml  # noqa: F401

    runtime.keep_one_console_handler()


def _quiet_zenml_to_register(args) -> None:
    if args.action == "register":  # `show` only reads the stack files
        _quiet_zenml(args)


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
    parser.add_argument("--json", dest="json_out", default=None, metavar="PATH",
                        help="Write the run summary JSON here (it goes to stdout too when "
                             "stdout is not a terminal)")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing --json file")
    parser.set_defaults(handler=_run, before=_quiet_zenml)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, rest = divmod(round(seconds), 60)
    if minutes:
        return f"{minutes} min {rest:02d} s"
    return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds:.2f} s"


def _run_report(summary: dict) -> str:
    """The run summary for people: how long each stage took, the schedule, scores, decision."""
    lines = [f"\nRun {summary['run']} {summary['status']} in "
             f"{_duration(summary.get('seconds'))}."]
    if stages := summary.get("stages"):
        # Non-breaking spaces inside each item, so a stage and its time stay on one line.
        items = ", ".join(f"{name} {_duration(seconds)}".replace(" ", "\xa0")
                          for name, seconds in stages.items())
        lines.append(textwrap.fill(items, width=100, initial_indent="  stages:   ",
                                   subsequent_indent=" " * 12).replace("\xa0", " "))
    training = summary.get("training") or {}
    if schedules := training.get("member_schedules"):
        lines.append(f"  training: {len(schedules)} members, "
                     + "; ".join(f"seed {m['seed']}: {m.get('epochs_run')} of "
                                 f"{m.get('planned_epochs')} planned epochs, best epoch "
                                 f"{m.get('best_epoch')}" for m in schedules)
                     + (f", stopped: {training['stop_reason']}"
                        if training.get("stop_reason") else ""))
    elif {"epochs_run", "planned_epochs"} <= training.keys():
        lines.append(f"  training: {training['epochs_run']} of {training['planned_epochs']} "
                     f"planned epochs, best epoch {training.get('best_epoch', '?')}"
                     + (f", stopped: {training['stop_reason']}"
                        if training.get("stop_reason") else ""))
    if training.get("stop_reason") == "time_budget":
        lines.append("  WARNING: training was cut by the time budget before its "
                     "learning-rate decay completed (training.max_minutes)")
    if test := summary.get("test"):
        lines.append("  test:     " + "  ".join(f"{name} {value:.3f}"
                                                for name, value in test.items()))
    if (sites := summary.get("sites")) and sites.get("sites_labelled"):
        per_area = sites.get("false_sites_per_100km2")
        lines.append(f"  sites:    {sites['sites_found']} of {sites['sites_labelled']} labelled "
                     "found, " + ("n/a" if per_area is None else f"{per_area:.1f}")
                     + " false sites per 100 km2")
    if "blessed" in summary:
        lines.append(f"  gate:     {'passed' if summary['blessed'] else 'REJECTED'} ("
                     + "; ".join(summary.get("reasons", [])) + ")")
    return "\n".join(lines)


def _run(args) -> int:
    from pipelines.runner import run_pipeline

    # Checked before the pipeline runs: a 20-minute run must not end on a refused file.
    _check_outputs([("--json", args.json_out)], args.overwrite,
                   {"configuration": args.config, "overlay": args.overlay})
    summary = run_pipeline(args.pipeline, args.config, args.overlay)
    if args.json_out:
        _write_json(summary, args.json_out)
    if not sys.stdout.isatty():  # a pipe or a file: the full summary for scripts
        print(json.dumps(summary, indent=2))
    if "run" in summary:
        print(_run_report(summary), file=sys.stderr)
    export = summary.get("export", {})
    if export.get("exported"):
        print(f"Model version {export['version']} exported:\n  TF Serving: "
              f"{export['saved_model']}\n  ONNX:       {export['onnx']}", file=sys.stderr)
        return 0
    if "export" in summary:
        print("Model REJECTED by the gate, nothing exported.", file=sys.stderr)
        return 3
    return 0


# --- stack / schedule ------------------------------------------------------------------------

def _add_stack(subparsers) -> None:
    parser = subparsers.add_parser("stack", help="ZenML stacks as code (infra/zenml/*.yaml): "
                                                 "show or register local/kubernetes/kubeflow.")
    parser.add_argument("action", choices=["show", "register"])
    parser.add_argument("names", nargs="*", help="Stack files by short name (default: all)")
    parser.add_argument("--dir", default=None, help="Stack folder (default: infra/zenml)")
    parser.add_argument("--activate", action="store_true", help="Activate the (last) stack")
    parser.set_defaults(handler=_stack, uses_tensorflow=lambda args: False,
                        before=_quiet_zenml_to_register)


def check_configuration_keys(stacks) -> None:
    """Refuse configuration keys the component's flavor does not define.

    ZenML's component configs drop unknown keys (extra="ignore", e.g. the s3 artifact store) or
    keep them unused (extra="allow", e.g. the kubernetes orchestrator), so a misspelt key would
    register without error and change nothing. Flavors ZenML does not ship are left to ZenML.

    Raises:
        TailsegError: naming the stack, the component and the unknown keys.
    """
    from zenml.stack.flavor_registry import FlavorRegistry

    registry = FlavorRegistry()
    flavors = {(flavor.type.value, flavor.name): flavor for flavor in
               (cls() for cls in registry.builtin_flavors + registry.integration_flavors)}
    for stack in stacks:
        for kind, (component,) in stack.components.items():
            flavor = flavors.get((kind, component.flavor))
            if flavor is None:
                continue
            fields = flavor.config_class.model_fields
            known = set(fields) | {field.alias for field in fields.values() if field.alias}
            unknown = sorted(set(component.configuration) - known)
            if unknown:
                raise TailsegError(
                    f"stack {stack.stack_name!r}: {kind} {component.name!r} ({component.flavor})"
                    f" has unknown configuration keys {unknown}; the flavor takes "
                    f"{sorted(fields)}")


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
    check_configuration_keys(chosen.values())
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
                        help="Submit the scheduled pipeline to the active stack; replaces a "
                             "schedule of the same name")
    parser.add_argument("--delete", action="store_true",
                        help="Delete the schedule named in the configuration (and its CronJob)")
    parser.add_argument("--orchestrator-schedule-deleted", action="store_true",
                        help="With --submit or --delete, where the orchestrator cannot delete "
                             "its schedules (Kubeflow): you deleted the KFP recurring run "
                             "yourself, so delete only ZenML's record")
    parser.set_defaults(handler=_schedule, uses_tensorflow=lambda args: args.submit,
                        before=_quiet_zenml)


def _schedule(args) -> int:
    import tempfile

    import yaml

    from pipelines.runner import check_zenml_keys
    from tailseg.config import load_run_yaml
    from tailseg.schedule import schedule_summary
    from tailseg.stacks import merge_run_configs

    merged = load_run_yaml(args.config)
    check_zenml_keys(merged, args.config)  # each file, so the error names it
    if args.overlay:
        overlay = load_run_yaml(args.overlay)
        check_zenml_keys(overlay, args.overlay)
        merged = merge_run_configs(merged, overlay)
    if args.delete:
        from pipelines.schedules import remove_schedule, schedule_name

        name = schedule_name(merged)
        deleted = remove_schedule(name, args.orchestrator_schedule_deleted)
        print(json.dumps({"deleted": deleted, "schedule": name}, indent=2))
        return 0
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
            print(json.dumps(run_pipeline("training", handle.name, None,
                                          args.orchestrator_schedule_deleted), indent=2))
    return 0


COMMANDS: list[Callable] = [_add_run, _add_stack, _add_schedule]


def build_parser():
    """The parser of every command of the installed `tailseg`."""
    return cli.build_parser(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, extra=COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
