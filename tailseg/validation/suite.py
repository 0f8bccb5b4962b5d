"""The curated expectation suites and their evaluation with Great Expectations 1.x.

The suites are JSON files in suites/, written and versioned by hand (never inferred from data).
They run in an ephemeral GX context over a pandas data source that holds the facts table.
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from tailseg.constants import BANDS

SUITE_DIR = Path(__file__).parent / "suites"
CHIP_SUITE = "tailseg_chips.v1.json"
DATASET_SUITE = "tailseg_dataset.v1.json"
STAT_NAMES: tuple[str, ...] = ("mean", "std")


@dataclass(frozen=True)
class Failure:
    """One failed expectation: for chip checks one per chip, else one for the dataset."""

    check: str
    message: str
    severity: str
    chip_id: str | None = None
    chip_ids: tuple[str, ...] = ()


# What an expectation's meta.requires may name (_runs): the parameters given only sometimes.
REQUIRABLE = {"previous_stats", "expected_crs"}


@cache
def load_suite(filename: str) -> dict[str, Any]:
    """A bundled suite file (read_suite), read once."""
    return read_suite(SUITE_DIR / filename)


def read_suite(path: Path) -> dict[str, Any]:
    """Read a suite file, checking that every expectation names its check and message and
    requires only parameters that exist."""
    suite = json.loads(path.read_text())
    for number, expectation in enumerate(suite["expectations"]):
        meta = expectation.get("meta", {})
        if not meta.get("check") or not meta.get("message"):
            raise ValueError(f"{path}: expectation {number} lacks meta.check or meta.message")
        required = meta.get("requires")
        if required is not None and required not in REQUIRABLE:
            # A typo here would silently drop the expectation (_runs).
            raise ValueError(f"{path}: expectation {number} requires {required!r}, not one of "
                             f"{sorted(REQUIRABLE)}")
    return suite


def suite_version(filename: str) -> str:
    suite = load_suite(filename)
    return f"{suite['name']}.v{suite['meta']['version']}"


def drift_parameters(previous_stats: dict | None, tolerance: float) -> dict[str, float]:
    """Bounds `<band>_<stat>_min/max` from the band statistics of the last validated run.

    Raises:
        ValueError: previous_stats is not the band_stats of an earlier validation.
    """
    bands = (previous_stats or {}).get("bands") or {}
    if not bands:
        return {}
    parameters = {}
    for band in BANDS:
        for stat in STAT_NAMES:
            try:
                previous = float(bands[band][stat])
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"previous_stats lacks bands.{band}.{stat}; pass the band_stats "
                                 "of an earlier ValidationResult") from error
            key = f"{band.lower()}_{stat}"
            parameters |= {f"{key}_previous": previous,
                           f"{key}_min": previous * (1 - tolerance),
                           f"{key}_max": previous * (1 + tolerance)}
    return parameters


class _MessageFormatter(string.Formatter):
    """str.format that tolerates missing names and missing values in the facts."""

    def get_value(self, key, args, kwargs):
        return kwargs.get(key, "{" + str(key) + "}")

    def format_field(self, value, format_spec):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if isinstance(value, float) and value.is_integer() and not format_spec:
            value = int(value)
        try:
            return super().format_field(value, format_spec)
        except (TypeError, ValueError):
            return str(value)


def format_message(template: str, values: dict[str, Any]) -> str:
    return _MessageFormatter().format(template, **values)


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suite(filename: str, frame: pd.DataFrame, parameters: dict[str, Any]):
    """Validate the facts table against one suite file in a fresh ephemeral GX context.

    Expectations whose meta.requires names a parameter or group that is absent (drift bounds on
    a first run, expected_crs when any CRS is allowed) are left out.

    Returns:
        The GX ExpectationSuiteValidationResult.
    """
    import great_expectations as gx

    definition = load_suite(filename)
    expectations = [e for e in definition["expectations"] if _runs(e, parameters)]
    context = _context()
    suite = context.suites.add(gx.ExpectationSuite(
        name=definition["name"], meta=definition["meta"], expectations=[]))
    for expectation in expectations:
        suite.add_expectation_configuration(_configuration(expectation))
    suite.save()
    batch = (context.data_sources.add_pandas("facts").add_dataframe_asset("chips")
             .add_batch_definition_whole_dataframe("all_chips"))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=definition["name"], data=batch, suite=suite))
    return validation.run(
        batch_parameters={"dataframe": frame}, expectation_parameters=parameters,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["chip_id"]})


def _runs(expectation: dict, parameters: dict[str, Any]) -> bool:
    """Whether the parameters an expectation requires are given: meta.requires is
    "previous_stats" (the drift bounds of the last validated run) or a parameter's name (e.g.
    expected_crs, absent when any CRS is allowed)."""
    required = expectation["meta"].get("requires")
    if required is None:
        return True
    if required == "previous_stats":
        return any(key.endswith("_previous") for key in parameters)
    return required in parameters


def _configuration(expectation: dict):
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    return ExpectationConfiguration(type=expectation["type"], kwargs=expectation["kwargs"],
                                    meta=expectation["meta"],
                                    severity=expectation.get("severity", "critical"))


def collect_failures(result, frame: pd.DataFrame, parameters: dict[str, Any]) -> list[Failure]:
    """Failed expectations of a GX result as Failures with messages filled from the facts.

    Column-map expectations give one Failure per failing chip (GX lists them by chip_id);
    aggregate expectations one Failure for the whole table.
    """
    names = parameters | {f"{key}_bound": value for key, value in parameters.items()}
    rows = frame.set_index("chip_id", drop=False).to_dict("index") if len(frame) else {}
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        meta, severity = config.meta, _severity(config)
        if outcome.exception_info.get("raised_exception"):
            failures.append(Failure(meta["check"], "GX could not evaluate the check: "
                                    f"{outcome.exception_info.get('exception_message')}", severity))
            continue
        details = outcome.result or {}
        ids = [str(item["chip_id"]) for item in details.get("unexpected_index_list") or []]
        if ids and config.type.startswith("expect_column_values"):
            if config.type == "expect_column_values_to_be_unique":
                failures.append(_unique_failure(meta, severity, details, names))
                continue
            failures += [Failure(meta["check"], format_message(meta["message"], names | rows[i]),
                                 severity, chip_id=i) for i in dict.fromkeys(ids)]
        else:
            observed = details.get("observed_value")
            failures.append(Failure(meta["check"], format_message(
                meta["message"], names | {"observed_value": observed}), severity))
    return failures


def _severity(config) -> str:
    severity = getattr(config, "severity", "critical")
    return str(getattr(severity, "value", severity))


def _unique_failure(meta: dict, severity: str, details: dict, names: dict) -> Failure:
    """Duplicates grouped by value: 'a, b; c, d' for two groups of identical chips."""
    column = next(key for key in details["unexpected_index_list"][0] if key != "chip_id")
    groups: dict[Any, list[str]] = {}
    for item in details["unexpected_index_list"]:
        groups.setdefault(item[column], []).append(str(item["chip_id"]))
    ids = tuple(i for group in groups.values() for i in group)
    text = "; ".join(", ".join(group) for group in groups.values())
    return Failure(meta["check"], format_message(meta["message"], names | {"chip_ids": text}),
                   severity, chip_ids=ids)
