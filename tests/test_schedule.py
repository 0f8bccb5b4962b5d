"""Cron validation before submission, the local-orchestrator refusal, and the dataset hash that
makes a scheduled run retrain only when the chips changed."""

from datetime import datetime

import pytest

from tailseg.errors import ScheduleError
from tailseg.schedule import (
    cron_line,
    dataset_cache_key,
    dataset_fingerprint,
    parse_cron,
    schedule_summary,
    validate_schedule,
)
from tests.rasters import make_dataset

NOW = datetime(2026, 11, 26, 19, 0)  # a Thursday


@pytest.mark.parametrize(("expression", "expected"), [
    ("0 3 * * 1", [datetime(2026, 11, 30, 3), datetime(2026, 12, 7, 3)]),
    ("*/20 4 * * MON-FRI", [datetime(2026, 11, 27, 4, 0), datetime(2026, 11, 27, 4, 20)]),
    ("@daily", [datetime(2026, 11, 27), datetime(2026, 11, 28)]),
    ("0 0 29 FEB *", [datetime(2028, 2, 29), datetime(2032, 2, 29)]),
    # Both day fields restricted: either matches (the 1st, or a Sunday).
    ("0 0 1 * sun", [datetime(2026, 11, 29), datetime(2026, 12, 1)]),
    ("30 2 1,15 jan-mar ?", [datetime(2027, 1, 1, 2, 30), datetime(2027, 1, 15, 2, 30)]),
    # A single value with a step runs to the field's end: minutes 5, 20, 35 and 50.
    ("5/15 19 * * *", [datetime(2026, 11, 26, 19, 5), datetime(2026, 11, 26, 19, 20)]),
    # Strictly after NOW (19:00 on the 26th): a time equal to it is not the next.
    ("0 19 * * *", [datetime(2026, 11, 27, 19), datetime(2026, 11, 28, 19)]),
])
def test_kubernetes_cron_fires_when_expected(expression, expected):
    assert parse_cron(expression).next_times(NOW, 2) == expected


def test_a_stepped_single_value_runs_to_the_end_of_the_field():
    assert parse_cron("5/15 * * * *").minutes == {5, 20, 35, 50}
    assert parse_cron("5/15 * * * *").next_times(NOW, 4) == [
        datetime(2026, 11, 26, 19, minute) for minute in (5, 20, 35, 50)]


def test_kubeflow_cron_has_seconds_first():
    cron = parse_cron("15 0 3 * * 1", "kubeflow")
    assert cron.next_times(NOW, 1) == [datetime(2026, 11, 30, 3, 0, 15)]
    with pytest.raises(ScheduleError, match="kubeflow expects 6 fields"):
        parse_cron("0 3 * * 1", "kubeflow")


@pytest.mark.parametrize(("expression", "message"), [
    ("0 24 * * *", "hour field: 24 is out of range 0-23"),
    ("60 * * * *", "minute field: 60 is out of range 0-59"),
    ("0 0 0 * *", "day-of-month field: 0 is out of range 1-31"),
    ("0 0 * 13 *", "month field: 13 is out of range 1-12"),
    ("0 0 * * 7", r"day-of-week field: 7 is out of range 0-6 \(use 0 for Sunday\)"),
    ("0 0 * JANUARY *", "month field: 'JANUARY' is not a number or a name JAN-DEC"),
    ("*/0 * * * *", "minute field: step '0' must be a positive integer"),
    ("10-5 * * * *", "minute field: range '10-5' runs backwards"),
    ("0 3 * *", r"kubernetes expects 5 fields \(minute hour day-of-month month day-of-week\)"),
    ("0 3 ? * * *", "expects 5 fields"),
    ("0 ? * * *", "hour field: '\\?' is not a number"),
    ("1,,2 * * * *", "minute field '1,,2' has an empty list item"),
    ("@fortnightly", "unknown macro"),
    ("TZ=America/Sao_Paulo 0 3 * * *", "Kubernetes rejects TZ="),
    ("", "is empty"),
])
def test_invalid_cron_is_rejected_naming_the_field(expression, message):
    with pytest.raises(ScheduleError, match=message):
        parse_cron(expression)


def test_cron_that_never_fires_is_rejected():
    with pytest.raises(ScheduleError, match="never fires"):
        schedule_summary({"schedule": {"cron_expression": "0 0 30 2 *"}}, "kubernetes", now=NOW)


def test_local_orchestrator_refuses_with_a_crontab_line():
    config = {"schedule": {"name": "weekly", "cron_expression": "0 3 * * 1"}}
    with pytest.raises(ScheduleError) as error:
        validate_schedule(config, "local", "zenml.k8s.yaml")
    text = str(error.value)
    assert "'local' orchestrator cannot run pipelines on a schedule" in text
    assert ("0 3 * * 1 cd /path/to/tailseg && mkdir -p logs && .venv/bin/tailseg run "
            "--config zenml.yaml") in text
    # The crontab line itself is checked: an invalid cron never becomes advice.
    with pytest.raises(ScheduleError, match="hour field"):
        cron_line("0 99 * * *")


def test_schedule_needs_a_cron_expression():
    with pytest.raises(ScheduleError, match="no schedule.cron_expression"):
        validate_schedule({"schedule": {"interval_second": 3600}}, "kubernetes")
    summary = schedule_summary({"schedule": {"name": "w", "cron_expression": "0 3 * * 1"}},
                               "kubernetes", now=NOW)
    assert summary["next_runs_utc"][0] == "2026-11-30T03:00:00"


def test_dataset_fingerprint_follows_content(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", n_chips=3, size=16, seed=1)
    first = dataset_fingerprint(root)
    assert dataset_fingerprint(root) == first  # stable
    mask = sorted((root / "masks").iterdir())[0]
    data = bytearray(mask.read_bytes())
    data[-1] ^= 1
    mask.write_bytes(bytes(data))
    changed = dataset_fingerprint(root)
    assert changed != first
    image = sorted((root / "images").iterdir())[0]
    image.rename(image.with_name("renamed_" + image.name))
    assert dataset_fingerprint(root) not in (first, changed)
    monkeypatch.setenv("TAILSEG_DATA_DIR", str(root))
    assert dataset_cache_key() == "dataset-sha256:" + dataset_fingerprint(root)


def test_dataset_fingerprint_of_empty_folder_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files under images/ or masks/"):
        dataset_fingerprint(tmp_path)


def test_submitting_again_replaces_the_schedule_of_that_name():
    """ZenML 0.98 refuses a second schedule of the same name (EntityExistsError from the
    store); remove_schedule clears it first, and a scheduled submission, which returns no run,
    is summarised from the stored schedule. Runs against the test session's isolated store."""
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.exceptions import EntityExistsError
    from zenml.models import PipelineRequest, ScheduleRequest

    from pipelines.schedules import remove_schedule, schedule_name, submitted_schedule

    client = Client()
    project = client.active_project.id
    pipeline = client.zen_store.create_pipeline(PipelineRequest(name="schedule-test",
                                                                project=project))
    orchestrator = client.active_stack_model.components[StackComponentType.ORCHESTRATOR][0]

    def submit(cron: str):  # the request PipelineDefinition._run sends for a schedule
        return client.zen_store.create_schedule(ScheduleRequest(
            project=project, pipeline_id=pipeline.id, orchestrator_id=orchestrator.id,
            name="weekly", active=True, cron_expression=cron))

    first = submit("0 3 * * 1")
    with pytest.raises(EntityExistsError):
        submit("0 4 * * 1")
    removed = remove_schedule("weekly")
    assert removed == {"name": "weekly", "id": str(first.id), "cron": "0 3 * * 1"}
    second = submit("0 4 * * 1")  # the name is free again (hard delete, not archived)
    summary = submitted_schedule("weekly", removed)
    assert summary["schedule_id"] == str(second.id) and summary["cron"] == "0 4 * * 1"
    assert summary["replaced"]["id"] == str(first.id)
    assert remove_schedule("weekly")["id"] == str(second.id)
    assert remove_schedule("weekly") is None
    with pytest.raises(ScheduleError, match="recorded no such schedule"):
        submitted_schedule("weekly", None)
    with pytest.raises(ScheduleError, match="schedule.name is missing"):
        schedule_name({"schedule": {"cron_expression": "0 3 * * 1"}})
    assert schedule_name({"schedule": {"name": "w"}}) == "w"


def test_zenml_returns_no_run_for_a_scheduled_submission():
    # The rule run_pipeline relies on (pipelines/pipeline_definition.py in ZenML 0.98): the
    # placeholder run, which is what the call returns, is only created without a schedule.
    import inspect

    from zenml.pipelines.pipeline_definition import Pipeline

    source = inspect.getsource(Pipeline._run)
    assert "create_placeholder_run(" in source and "if not snapshot.schedule" in source
    assert "The pipeline run or `None` if running with a schedule." in source


# --- Orchestrators that cannot delete their schedules ------------------------------------------

def _orchestrator(flavor: str):
    """A registered orchestrator component of that flavor (no cluster is contacted)."""
    from uuid import uuid4

    from zenml.client import Client
    from zenml.enums import StackComponentType

    return Client().create_stack_component(f"{flavor}-{uuid4().hex[:8]}", flavor,
                                           StackComponentType.ORCHESTRATOR, {})


def _schedule_on(orchestrator, name: str):
    """The schedule PipelineDefinition._run records for a submission to that orchestrator."""
    from uuid import uuid4

    from zenml.client import Client
    from zenml.models import PipelineRequest, ScheduleRequest

    client = Client()
    project = client.active_project.id
    pipeline = client.zen_store.create_pipeline(PipelineRequest(
        name=f"schedule-test-{uuid4().hex[:8]}", project=project))
    return client.zen_store.create_schedule(ScheduleRequest(
        project=project, pipeline_id=pipeline.id, orchestrator_id=orchestrator.id, name=name,
        active=True, cron_expression="0 0 3 * * 1"))


KFP_MODULES = ("kfp", "kfp.dsl", "kfp.client", "kfp.compiler", "kfp_server_api",
               "kfp_server_api.exceptions")


@pytest.fixture(params=["as installed", "kfp loadable"])
def kubeflow_orchestrator_class(request, monkeypatch):
    """How ZenML's KubeflowOrchestrator class loads here. kfp is not part of the dev install, so
    ZenML cannot load the class ("as installed"); "kfp loadable" provides the few kfp names the
    module uses at import (none is called), so that ZenML's own class and its
    supports_schedule_deletion decide, as on a machine with the [kubeflow] extra.
    Yields whether the class loads."""
    import importlib.util
    import sys
    import types

    installed = importlib.util.find_spec("kfp") is not None
    if request.param == "as installed" or installed:
        yield installed
        return
    orchestrators = "zenml.integrations.kubeflow.orchestrators"
    def stand_in(name: str, base: type = object) -> type:
        return type(name, (base,), {})

    client = stand_in("Client")
    names = {"kfp": {"Client": client}, "kfp.client": {"Client": client},
             "kfp.dsl": {"PipelineTask": stand_in("PipelineTask"),
                         "ContainerSpec": stand_in("ContainerSpec")},
             "kfp.compiler": {"Compiler": stand_in("Compiler")}, "kfp_server_api": {},
             "kfp_server_api.exceptions": {"ApiException": stand_in("ApiException", Exception)}}
    for name in KFP_MODULES:
        module = types.ModuleType(name)
        module.__dict__.update(names[name])
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["kfp"].dsl = sys.modules["kfp.dsl"]
    yield True
    for name in [name for name in sys.modules if name.startswith(orchestrators)]:
        del sys.modules[name]  # the class built on the stand-ins goes with them
    import zenml.integrations.kubeflow as kubeflow

    if hasattr(kubeflow, "orchestrators"):
        delattr(kubeflow, "orchestrators")


def test_zenml_deletes_kubernetes_schedules_but_not_kubeflow_ones(kubeflow_orchestrator_class):
    # What remove_schedule asks: ZenML 0.98's supports_schedule_deletion (true only where the
    # orchestrator overrides delete_schedule) on the registered orchestrators.
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.orchestrators import BaseOrchestrator

    if not kubeflow_orchestrator_class:
        with pytest.raises(ImportError, match="kfp"):
            BaseOrchestrator.from_model(_orchestrator("kubeflow"))
    else:
        kubeflow = BaseOrchestrator.from_model(_orchestrator("kubeflow"))
        assert kubeflow.config.is_schedulable and not kubeflow.supports_schedule_deletion
    kubernetes = BaseOrchestrator.from_model(_orchestrator("kubernetes"))
    assert kubernetes.config.is_schedulable and kubernetes.supports_schedule_deletion
    local = BaseOrchestrator.from_model(
        Client().active_stack_model.components[StackComponentType.ORCHESTRATOR][0])
    assert not local.config.is_schedulable  # no orchestrator side to delete


def test_a_kubeflow_schedule_is_kept_until_its_recurring_run_is_deleted(
        kubeflow_orchestrator_class):
    """Client.delete_schedule would delete only ZenML's record and leave the KFP recurring run
    firing; remove_schedule refuses, naming the recurring run, until the user says it is gone."""
    from pipelines.schedules import find_schedule, remove_schedule

    schedule = _schedule_on(_orchestrator("kubeflow"), "kfp-weekly")
    with pytest.raises(ScheduleError) as error:
        remove_schedule("kfp-weekly")
    text = str(error.value)
    assert "its KFP recurring run (in the KFP experiment 'schedule-test-" in text
    assert "`kfp recurring-run delete <id>`" in text and "--orchestrator-schedule-deleted" in text
    assert ("ZenML's kubeflow orchestrator cannot delete its schedules" if
            kubeflow_orchestrator_class else "(kfp is not installed)") in text
    assert find_schedule("kfp-weekly").id == schedule.id  # ZenML's record kept
    removed = remove_schedule("kfp-weekly", orchestrator_side_deleted=True)
    assert removed == {"name": "kfp-weekly", "id": str(schedule.id), "cron": "0 0 3 * * 1"}
    assert find_schedule("kfp-weekly") is None


def test_a_kubernetes_schedule_is_deleted_with_its_cron_job():
    # The orchestrator deletes the CronJob named in the schedule's metadata; without one
    # (as here, no cluster) it only warns, and ZenML's record goes.
    from pipelines.schedules import find_schedule, orchestrator_leftover, remove_schedule

    schedule = _schedule_on(_orchestrator("kubernetes"), "k8s-weekly")
    assert orchestrator_leftover(schedule) is None
    assert remove_schedule("k8s-weekly")["id"] == str(schedule.id)
    assert find_schedule("k8s-weekly") is None


def test_schedule_delete_refuses_a_kubeflow_schedule_until_told(tmp_path, capsys):
    from pathlib import Path

    from pipelines.cli import main
    from pipelines.schedules import find_schedule

    root = Path(__file__).resolve().parent.parent
    schedule = _schedule_on(_orchestrator("kubeflow"), "tailseg-weekly-retrain")
    command = ["schedule", "--config", str(root / "zenml.yaml"), "--overlay",
               str(root / "zenml.kubeflow.yaml"), "--delete"]
    assert main(command) == 2
    assert "KFP recurring run" in capsys.readouterr().err
    assert find_schedule("tailseg-weekly-retrain").id == schedule.id
    assert main([*command, "--orchestrator-schedule-deleted"]) == 0
    assert f'"id": "{schedule.id}"' in capsys.readouterr().out
    assert find_schedule("tailseg-weekly-retrain") is None
