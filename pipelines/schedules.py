"""Submitting a pipeline on a schedule, idempotently, with ZenML 0.98.

Three facts of ZenML 0.98 shape this module (pipelines/pipeline_definition.py):

* A scheduled submission returns no run: `create_placeholder_run` only runs when the snapshot
  has no schedule, so calling the pipeline gives `None`. What exists afterwards is a schedule
  (and, on Kubernetes, a CronJob), looked up here by its name.
* Every submission creates a new `ScheduleRequest` with the configured name, and the store
  refuses a name that already exists in the project (`EntityExistsError`). Submitting again
  must therefore replace the old schedule: `Client.delete_schedule` deletes the orchestrator's
  side too (the CronJob) and then the ZenML record.
* Only where the orchestrator overrides `delete_schedule` (its `supports_schedule_deletion`,
  orchestrators/base_orchestrator.py) is the orchestrator's side deleted: Kubernetes does,
  Kubeflow does not, and `Client.delete_schedule` then only logs a warning and deletes the
  record, leaving the KFP recurring run firing (a new submission adds another). Such a
  schedule is replaced or deleted only once the user says the orchestrator's side is gone.
"""

from __future__ import annotations

import logging
from typing import Any

from tailseg.errors import ScheduleError

logger = logging.getLogger(__name__)


def schedule_name(run_config: dict[str, Any]) -> str:
    """The schedule's name; required, so that a second submission can find and replace it.

    Raises:
        ScheduleError: when the run configuration's schedule has no name.
    """
    name = (run_config.get("schedule") or {}).get("name")
    if not name:
        raise ScheduleError("schedule.name is missing: give the schedule a name (e.g. "
                            "tailseg-weekly-retrain) so that submitting again replaces it "
                            "instead of adding a second CronJob")
    return str(name)


def find_schedule(name: str):
    """The active (not archived) schedule of that name in the active project, or None."""
    from zenml.client import Client

    client = Client()
    matches = client.list_schedules(name=name, project=client.active_project.id).items
    return matches[0] if matches else None


def orchestrator_leftover(schedule) -> str | None:
    """What deleting the schedule in ZenML would leave running on its orchestrator, or None
    when the orchestrator deletes its side (Kubernetes: the CronJob) or has none (local)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.orchestrators import BaseOrchestrator
    from zenml.stack import Flavor

    if schedule.orchestrator_id is None:
        return None
    try:
        model = Client().get_stack_component(StackComponentType.ORCHESTRATOR,
                                             schedule.orchestrator_id)
    except KeyError:  # the orchestrator is gone from ZenML: nothing left to ask
        return None
    flavor = Flavor.from_model(model.flavor)
    if not flavor.config_class(**model.configuration).is_schedulable:
        return None  # e.g. local: the schedule exists only in ZenML
    try:
        if BaseOrchestrator.from_model(model).supports_schedule_deletion:
            return None
        why = f"ZenML's {model.flavor_name} orchestrator cannot delete its schedules"
    except ImportError as error:  # ZenML re-raises the integration's own ImportError
        missing = getattr(error.__cause__, "name", None) or error.name or "its integration"
        why = (f"the {model.flavor_name} orchestrator cannot be loaded here ({missing} is not "
               "installed), so its side of the schedule cannot be deleted from here")
    if model.flavor_name == "kubeflow":
        pipeline = (Client().get_pipeline(schedule.pipeline_id).name if schedule.pipeline_id
                    else "named after the pipeline")
        return (f"{why}: its KFP recurring run (in the KFP experiment {pipeline!r}, created "
                f"{schedule.created:%Y-%m-%d %H:%M} UTC) would keep firing. Delete it in the KFP "
                "UI (Runs > Recurring runs) or with `kfp recurring-run delete <id>` (ids from "
                "`kfp recurring-run list`)")
    return (f"{why}: the schedule on orchestrator {model.name!r} would keep firing; delete it "
            "there yourself")


def remove_schedule(name: str, orchestrator_side_deleted: bool = False) -> dict[str, Any] | None:
    """Delete the schedule of that name (the orchestrator's CronJob, then ZenML's record).

    Args:
        name: The schedule's name.
        orchestrator_side_deleted: The user deleted the orchestrator's side (the KFP recurring
            run) themselves, where the orchestrator cannot: delete ZenML's record only.

    Returns:
        What was removed (name, id, cron), or None when there was no such schedule.

    Raises:
        ScheduleError: when the orchestrator cannot delete its side of the schedule and
            `orchestrator_side_deleted` is false; ZenML's record is then kept.
    """
    from zenml.client import Client

    existing = find_schedule(name)
    if existing is None:
        return None
    leftover = orchestrator_leftover(existing)
    if leftover and not orchestrator_side_deleted:
        raise ScheduleError(f"schedule {name!r} was not replaced or deleted: {leftover}. Then "
                            "run `tailseg schedule --submit` (or --delete) again with "
                            "--orchestrator-schedule-deleted; ZenML's record is kept until then")
    # Hard delete: an archived schedule would keep its name.
    if leftover:  # what Client.delete_schedule does after its warning, without loading it
        Client().zen_store.delete_schedule(schedule_id=existing.id, soft=False)
    else:
        Client().delete_schedule(existing.id, soft=False)
    logger.info("removed schedule %s (%s)", name, existing.id)
    return {"name": name, "id": str(existing.id), "cron": existing.cron_expression}


def submitted_schedule(name: str, replaced: dict[str, Any] | None) -> dict[str, Any]:
    """Summary of a scheduled submission, read back from the store (there is no run).

    Raises:
        ScheduleError: when ZenML recorded no schedule of that name.
    """
    schedule = find_schedule(name)
    if schedule is None:
        raise ScheduleError(f"the pipeline was submitted with schedule {name!r} but ZenML "
                            "recorded no such schedule; see `zenml pipeline schedule list`")
    return {"schedule": name, "schedule_id": str(schedule.id),
            "cron": schedule.cron_expression, "active": schedule.active,
            "replaced": replaced}
