"""Validation settings: the bounds the curated expectation suites are evaluated with."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tailseg.constants import REFLECTANCE_MAX, REFLECTANCE_MIN


class ValidationConfig(BaseModel):
    """Bounds and policy of dataset validation (the `validation:` section of the run config).

    The expectations themselves live in versioned suite files (tailseg/validation/suites/); these
    values fill their `$PARAMETER` placeholders at run time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    expected_crs: list[str] | None = Field(
        default_factory=lambda: ["EPSG:4326"],
        description="CRS an image may have, as 'EPSG:<code>' strings; None accepts any CRS.")
    chip_size_min: int = Field(64, ge=1, description="Smallest chip width/height in pixels.")
    chip_size_max: int = Field(4096, ge=1, description="Largest chip width/height in pixels.")
    pixel_size_min: float = Field(
        4.0e-5, gt=0, description="Smallest pixel size in CRS units (default: degrees, ~4.5 m).")
    pixel_size_max: float = Field(
        2.0e-4, gt=0, description="Largest pixel size in CRS units (default: degrees, ~22 m).")
    reflectance_min: float = Field(REFLECTANCE_MIN, description="Lowest plausible reflectance.")
    reflectance_max: float = Field(REFLECTANCE_MAX, description="Highest plausible reflectance.")
    max_nodata_fraction: float = Field(
        0.0, ge=0, le=0,
        description="Share of nodata pixels an image may have: only 0, because the chip loader "
                    "rejects any nodata pixel (a higher value would pass chips that training "
                    "then refuses).")
    tailings_fraction_min: float = Field(
        0.001, ge=0, le=1, description="Per chip: fewer tailings pixels means a suspect mask.")
    tailings_fraction_max: float = Field(
        0.95, ge=0, le=1, description="Per chip: more tailings pixels means a suspect mask.")
    class_balance_min: float = Field(
        0.01, ge=0, le=1, description="Dataset: lowest mean tailings fraction of valid chips.")
    class_balance_max: float = Field(
        0.5, ge=0, le=1, description="Dataset: highest mean tailings fraction of valid chips.")
    max_quarantined_share: float = Field(
        0.1, ge=0, le=1, description="Above this share of invalid chips the run stops.")
    min_valid_chips: int = Field(10, ge=1, description="Fewer valid chips stop the run.")
    drift_tolerance: float = Field(
        0.2, gt=0, description="Allowed relative change of per-band mean and standard "
                               "deviation against the last validated run (a warning).")

    @model_validator(mode="after")
    def _ordered_bounds(self) -> ValidationConfig:
        for low, high in (("chip_size_min", "chip_size_max"), ("pixel_size_min", "pixel_size_max"),
                          ("reflectance_min", "reflectance_max"),
                          ("tailings_fraction_min", "tailings_fraction_max"),
                          ("class_balance_min", "class_balance_max")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) is above {high} "
                                 f"({getattr(self, high)})")
        return self

    def suite_parameters(self) -> dict[str, object]:
        """Values for the suites' `$PARAMETER` placeholders; expected_crs only when it is set
        (None accepts any CRS: the suite's crs_allowed check, which requires it, is left out)."""
        values = self.model_dump(exclude={"expected_crs"})
        if self.expected_crs is not None:
            values["expected_crs"] = list(self.expected_crs)
        return values
