"""Submitting a pipeline on a schedule, idempotently, with ZenML 0.98.

Two facts of ZenML 0.98 shape this module (pipelines/pipeline_definition.py):

* A scheduled submission returns no run: `create_placeholder_run` only runs when the snapshot
  has no schedule, so calling the pipeline gives `None`. What exists afterwards is a schedule
  (and, on Kubernetes, a CronJob), looked up here by its name.
* Every submission creates a new `ScheduleRequest` with the configured name, and the store
  refuses a name that already exists in the project (`EntityExistsError`). Submitting again
  must therefore replace the old schedule: `Client.delete_schedule` deletes the orchestrator's
  side too (the CronJob, where the orchestrator supports deletion) and then the ZenML record.
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


def remove_schedule(name: str) -> dict[str, Any] | None:
    """Delete the schedule of that name (the orchestrator's CronJob, then ZenML's record).

    Returns:
        What was removed (name, id, cron), or None when there was no such schedule.
    """
    from zenml.client import Client

    existing = find_schedule(name)
    if existing is None:
        return None
    # Hard delete: an archived schedule would keep its name.
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
