"""validate_dataset: facts -> chip suite -> quarantine -> dataset suite -> verdict and reports.

Policy: a chip that fails any critical chip check is quarantined (left out, listed with reasons)
and the run goes on, unless the quarantined share exceeds `max_quarantined_share` or a critical
dataset check fails; then the dataset is unusable and raise_if_unusable stops the run.
Warnings (band drift) are reported but never stop it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tailseg.constants import BANDS, CONVENTIONS, Convention
from tailseg.errors import DatasetValidationError, ReflectanceConventionError
from tailseg.validation.config import ValidationConfig
from tailseg.validation.facts import gather_facts
from tailseg.validation.report import plain, render_gx_html, render_html
from tailseg.validation.suite import (
    CHIP_SUITE,
    DATASET_SUITE,
    STAT_NAMES,
    Failure,
    collect_failures,
    drift_parameters,
    run_suite,
    suite_version,
)


@dataclass
class ValidationResult:
    """Outcome of validate_dataset; `report` is the JSON report, `html` the rendered GX results."""

    valid_ids: list[str]
    quarantined: dict[str, list[dict]]
    dataset_failures: list[dict]
    usable: bool
    band_stats: dict
    report: dict = field(repr=False)
    html: str = field(repr=False)
    warnings: list[dict] = field(default_factory=list)


def band_stats(valid_facts, version: str) -> dict:
    """Per-band mean over valid chips of the chip mean and of the within-chip std (the values
    the drift checks compare); pass it as previous_stats to the next run."""
    if not len(valid_facts):
        return {"bands": {}, "n_chips": 0, "suite": version}
    bands = {band: {stat: float(valid_facts[f"{band.lower()}_{stat}"].mean())
                    for stat in STAT_NAMES} for band in BANDS}
    return {"bands": bands, "n_chips": len(valid_facts), "suite": version}


def _entry(failure: Failure) -> dict:
    entry = {"check": failure.check, "message": failure.message, "severity": failure.severity}
    return entry | ({"chip_ids": list(failure.chip_ids)} if failure.chip_ids else {})


def _overlaps(valid) -> dict[str, list[str]]:
    """{group key: chip ids} of the valid chips that share ground (tailseg.overlaps)."""
    from tailseg.dataset import ChipPair
    from tailseg.overlaps import group_members, overlap_groups, read_footprints

    pairs = [ChipPair(row.chip_id, Path(row.image_path), Path(row.mask_path))
             for row in valid.itertuples()]
    groups = overlap_groups(read_footprints(pairs))
    return {key: ids for key, ids in group_members(groups, groups).items() if len(ids) > 1}


def validate_dataset(data_dir: str | Path, config: ValidationConfig,
                     convention: Convention = "auto",
                     previous_stats: dict | None = None) -> ValidationResult:
    """Validate images/ and masks/ of data_dir against the curated suites (read-only).

    Raises:
        DatasetNotFoundError: data_dir, images/ or masks/ does not exist.
        ReflectanceConventionError: convention is unknown.
        ValueError: previous_stats is malformed.
    """
    if convention not in CONVENTIONS:
        raise ReflectanceConventionError(f"unknown reflectance convention {convention!r}; use "
                                         f"one of {CONVENTIONS}")
    started = time.perf_counter()
    facts = gather_facts(data_dir, convention, max_side=config.chip_size_max)
    parameters = config.suite_parameters() | drift_parameters(previous_stats,
                                                              config.drift_tolerance)
    chip_result = run_suite(CHIP_SUITE, facts, parameters)
    chip_failures = collect_failures(chip_result, facts, parameters)
    quarantined: dict[str, list[dict]] = {}
    for failure in chip_failures:
        if failure.chip_id is not None and failure.severity == "critical":
            quarantined.setdefault(failure.chip_id, []).append(
                {"check": failure.check, "message": failure.message})
    valid = facts[~facts["chip_id"].isin(quarantined)].reset_index(drop=True)
    dataset_result = run_suite(DATASET_SUITE, valid, parameters)
    outcomes = [f for f in chip_failures if f.chip_id is None]
    outcomes += collect_failures(dataset_result, valid, parameters)
    n_chips = len(facts)
    if n_chips and len(quarantined) / n_chips > config.max_quarantined_share:
        outcomes.append(Failure("quarantined_share", (
            f"{len(quarantined)} of {n_chips} chips ({len(quarantined) / n_chips:.0%}) failed "
            f"chip checks, at most {config.max_quarantined_share:.0%} may be quarantined: "
            f"{', '.join(sorted(quarantined))}"), "critical", chip_ids=tuple(sorted(quarantined))))
    groups = _overlaps(valid)
    if groups:
        outcomes.append(Failure("chips_overlap", (
            f"{sum(len(ids) for ids in groups.values())} chips in {len(groups)} groups share "
            "ground with other chips (each labelling its own site): the split keeps a group "
            "in one part and data.overlaps: merge gives each chip its neighbours' labels; "
            "groups: " + "; ".join(", ".join(ids) for ids in groups.values())), "warning",
            chip_ids=tuple(sorted(c for ids in groups.values() for c in ids))))
    failures = [_entry(f) for f in outcomes if f.severity == "critical"]
    warnings = [_entry(f) for f in outcomes if f.severity != "critical"]
    versions = [suite_version(CHIP_SUITE), suite_version(DATASET_SUITE)]
    stats = band_stats(valid, versions[1])
    report = plain({
        "data_dir": str(data_dir), "usable": not failures, "created": datetime.now(UTC).isoformat(),
        "suites": versions, "convention": convention, "config": config.model_dump(),
        "n_chips": n_chips, "n_valid": len(valid), "n_quarantined": len(quarantined),
        "valid_ids": list(valid["chip_id"]),
        "quarantined": [{"chip_id": chip_id,
                         "image": facts.loc[facts.chip_id == chip_id, "image_path"].iloc[0],
                         "mask": facts.loc[facts.chip_id == chip_id, "mask_path"].iloc[0],
                         "checks": sorted({f["check"] for f in reasons}), "failures": reasons}
                        for chip_id, reasons in sorted(quarantined.items())],
        "dataset_failures": failures, "warnings": warnings, "band_stats": stats,
        "overlap_groups": groups,
        "gx": {"chips": chip_result.describe_dict(), "dataset": dataset_result.describe_dict()},
        "seconds": round(time.perf_counter() - started, 3)})
    page = render_html(report, [(versions[0], render_gx_html(chip_result)),
                                (versions[1], render_gx_html(dataset_result))])
    return ValidationResult(valid_ids=report["valid_ids"], quarantined=quarantined,
                            dataset_failures=failures, usable=not failures, band_stats=stats,
                            report=report, html=page, warnings=warnings)


def raise_if_unusable(result: ValidationResult) -> None:
    """Stop the run before training when the dataset is unusable.

    Raises:
        DatasetValidationError: listing the failed dataset checks and every quarantined chip.
    """
    if result.usable:
        return
    lines = [f"dataset check {f['check']} failed: {f['message']}" for f in result.dataset_failures]
    lines += [f"chip {chip_id} quarantined ({', '.join(r['check'] for r in reasons)}): "
              + "; ".join(r["message"] for r in reasons)
              for chip_id, reasons in sorted(result.quarantined.items())]
    raise DatasetValidationError(
        f"{result.report['data_dir']}: dataset unusable; fix or remove these chips, or relax "
        "the validation: section of the run config:\n  " + "\n  ".join(lines))
