"""Dataset validation with Great Expectations 1.x, the ExampleValidator of tailseg's pipeline.

Per-chip facts (tailseg.validation.facts) are checked against curated, versioned suites
(suites/*.json); invalid chips are quarantined and dataset-level checks decide whether the run
may go on (tailseg.validation.policy).

Names are imported lazily, so that `tailseg.config` can import ValidationConfig without pulling
in pandas and rasterio.
"""

from importlib import import_module

_EXPORTS = {"ValidationConfig": "config", "ValidationResult": "policy",
            "raise_if_unusable": "policy", "validate_dataset": "policy",
            "write_reports": "report"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
