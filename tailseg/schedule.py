"""Retraining schedules: cron validation before submission, and the dataset content hash.

ZenML 0.98 stores any cron string it is given and only the orchestrator rejects it later
(zenml-io/zenml#4295), so a typo leaves a schedule without a CronJob. `parse_cron` checks the
expression the way the orchestrator will read it:

* "kubernetes": 5 fields (minute hour day-of-month month day-of-week), as Kubernetes CronJobs
  read them (robfig/cron's standard parser): `*`, `?`, lists, ranges, steps, JAN-DEC, SUN-SAT,
  day-of-week 0-6, and the macros @yearly @annually @monthly @weekly @daily @midnight @hourly.
  `TZ=`/`CRON_TZ=` prefixes are refused by Kubernetes; its CronJob has a timeZone field.
* "kubeflow": Kubeflow Pipelines recurring runs take 6 fields, seconds first.

`dataset_cache_key` is the "retrain only when the data changed" trigger: used as the ZenML
cache function of the steps that read the dataset, an unchanged dataset makes every step of a
scheduled run a cache hit, so nothing is retrained or exported.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from tailseg.errors import ScheduleError

Dialect = Literal["kubernetes", "kubeflow"]
SCHEDULABLE_FLAVORS = {"kubernetes": "kubernetes", "kubeflow": "kubeflow"}
DATA_DIR_ENV = "TAILSEG_DATA_DIR"

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# name, lowest, highest, names for lowest.., whether "?" may stand for "*"
_FIELDS: dict[str, tuple[int, int, list[str], bool]] = {
    "second": (0, 59, [], False),
    "minute": (0, 59, [], False),
    "hour": (0, 23, [], False),
    "day-of-month": (1, 31, [], True),
    "month": (1, 12, _MONTHS, False),
    "day-of-week": (0, 6, _DAYS, True),
}
_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the allowed values of every field."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_restricted: bool
    weekday_restricted: bool

    def _day_matches(self, day: datetime) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        # Classic cron: when both day fields are restricted, either one suffices.
        if self.day_restricted and self.weekday_restricted:
            return in_month or in_week
        return in_month and in_week

    def next_times(self, after: datetime, count: int = 3, horizon_days: int = 366 * 9
                   ) -> list[datetime]:
        """The next `count` firing times strictly after `after` (naive, in the cron's zone)."""
        found: list[datetime] = []
        start = after.replace(microsecond=0)
        day = start.replace(hour=0, minute=0, second=0)
        for _ in range(horizon_days):
            if day.month in self.months and self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        for second in sorted(self.seconds):
                            when = day.replace(hour=hour, minute=minute, second=second)
                            if when > start:
                                found.append(when)
                                if len(found) == count:
                                    return found
            day += timedelta(days=1)
        if not found:
            raise ScheduleError(f"cron {self.expression!r} never fires (e.g. 30 February)")
        return found


def _value(token: str, field: str, expression: str) -> int:
    low, high, names, _ = _FIELDS[field]
    if token.upper() in names:
        return low + names.index(token.upper())
    if not token.isdigit():
        allowed = f" or a name {names[0]}-{names[-1]}" if names else ""
        raise ScheduleError(f"cron {expression!r}: {field} field: {token!r} is not a number"
                            f"{allowed}")
    value = int(token)
    if not low <= value <= high:
        hint = " (use 0 for Sunday)" if field == "day-of-week" and value == 7 else ""
        raise ScheduleError(f"cron {expression!r}: {field} field: {value} is out of range "
                            f"{low}-{high}{hint}")
    return value


def _parse_field(text: str, field: str, expression: str) -> tuple[frozenset[int], bool]:
    """The values a field allows, and whether it restricts anything (not `*`/`?`)."""
    low, high, _, question = _FIELDS[field]
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"cron {expression!r}: {field} field {text!r} has an empty "
                                "list item")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text or part.endswith("/"):
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"cron {expression!r}: {field} field: step {step_text!r} "
                                    "must be a positive integer")
            step = int(step_text)
        if base == "*" or (base == "?" and question):
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = _value(start, field, expression), _value(end, field, expression)
            if first > last:
                raise ScheduleError(f"cron {expression!r}: {field} field: range {base!r} "
                                    "runs backwards")
        else:
            first = _value(base, field, expression)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values), not text.startswith(("*", "?"))


def parse_cron(expression: str, dialect: Dialect = "kubernetes") -> Cron:
    """Parse and validate a cron expression for the given orchestrator.

    Raises:
        ScheduleError: naming the expression, the field and the problem.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise ScheduleError(f"cron expression {expression!r} is empty; e.g. '0 3 * * 1'")
    text = " ".join(expression.split())
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise ScheduleError(f"cron {expression!r}: Kubernetes rejects TZ= in the schedule; "
                            "write the time in UTC (or the CronJob's timeZone)")
    if text.startswith("@"):
        if text.lower() not in _MACROS or dialect != "kubernetes":
            raise ScheduleError(f"cron {expression!r}: unknown macro for {dialect}; use one of "
                                f"{sorted(_MACROS)} (kubernetes only) or explicit fields")
        text = _MACROS[text.lower()]
    names = list(_FIELDS)[1:] if dialect == "kubernetes" else list(_FIELDS)
    parts = text.split(" ")
    if len(parts) != len(names):
        raise ScheduleError(f"cron {expression!r}: {dialect} expects {len(names)} fields "
                            f"({' '.join(names)}), got {len(parts)}")
    fields = {name: _parse_field(part, name, expression)
              for name, part in zip(names, parts, strict=True)}
    seconds = fields["second"][0] if "second" in fields else frozenset({0})
    return Cron(expression, seconds, fields["minute"][0], fields["hour"][0],
                fields["day-of-month"][0], fields["month"][0], fields["day-of-week"][0],
                fields["day-of-month"][1], fields["day-of-week"][1])


def validate_schedule(run_config: dict[str, Any], orchestrator_flavor: str,
                      source: str = "run configuration") -> Cron:
    """Check the `schedule:` section of a ZenML run configuration for the target orchestrator.

    Raises:
        ScheduleError: no schedule, a cron-less schedule, an invalid cron, or an orchestrator
            that cannot schedule (the local one), with the cron line to use instead.
    """
    schedule = run_config.get("schedule")
    if not isinstance(schedule, dict) or not schedule.get("cron_expression"):
        raise ScheduleError(f"{source}: no schedule.cron_expression; the Kubernetes "
                            "orchestrator only schedules with a cron expression")
    cron_text = schedule["cron_expression"]
    dialect = SCHEDULABLE_FLAVORS.get(orchestrator_flavor)
    if dialect is None:
        raise ScheduleError(
            f"the {orchestrator_flavor!r} orchestrator cannot run pipelines on a schedule "
            f"({source} asks for {cron_text!r}). Register and activate the kubernetes or "
            "kubeflow stack (`tailseg stack register kubernetes`), or let the host's cron run "
            f"it, e.g. crontab line: {cron_line(cron_text)}")
    return parse_cron(cron_text, dialect)


def cron_line(cron_text: str, workdir: str = "/path/to/tailseg",
              config: str = "zenml.yaml") -> str:
    """A crontab line that runs the local pipeline at the times a 5-field cron gives."""
    parse_cron(cron_text, "kubernetes")
    return (f"{cron_text} cd {workdir} && mkdir -p logs && .venv/bin/tailseg run --config "
            f"{config} >> logs/retrain.log 2>&1")


def dataset_fingerprint(data_dir: str | Path) -> str:
    """SHA-256 over the relative path and content of every file under images/ and masks/.

    Raises:
        FileNotFoundError: when data_dir has neither images/ nor masks/.
    """
    root = Path(data_dir)
    files = sorted(path for sub in ("images", "masks") if (root / sub).is_dir()
                   for path in (root / sub).rglob("*") if path.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no files under images/ or masks/ to fingerprint")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def dataset_cache_key() -> str:
    """ZenML `cache_policy.cache_func`: the fingerprint of $TAILSEG_DATA_DIR (default bundled).

    ZenML calls it without arguments, hence the environment variable.
    """
    data_dir = os.environ.get(DATA_DIR_ENV, "data/tailings-br")
    return f"dataset-sha256:{dataset_fingerprint(data_dir)}"


def schedule_summary(run_config: dict[str, Any], orchestrator_flavor: str,
                     source: str = "run configuration", now: datetime | None = None,
                     count: int = 3) -> dict[str, Any]:
    """Validate the schedule for the orchestrator and list its next firing times (UTC).

    Raises:
        ScheduleError: as validate_schedule, or when the cron never fires.
    """
    cron = validate_schedule(run_config, orchestrator_flavor, source)
    now = now or datetime.now(UTC).replace(tzinfo=None)
    times = cron.next_times(now, count)
    return {"schedule": run_config["schedule"].get("name"), "cron": cron.expression,
            "orchestrator": orchestrator_flavor, "next_runs_utc": [t.isoformat() for t in times]}
