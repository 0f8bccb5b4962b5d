"""Typed, strict configuration. Defaults live here; values come from zenml.yaml.

Every model forbids unknown keys, so a typo in zenml.yaml fails loudly at the start of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tailseg.constants import Convention
from tailseg.errors import ConfigError
from tailseg.validation.config import ValidationConfig

LossName = Literal["bce", "dice", "bce_dice", "focal", "focal_dice"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    """Where the chips are and how they are split."""

    data_dir: str = "data/tailings-br"
    convention: Convention = "auto"
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 42
    max_chips: int | None = Field(None, ge=3, description="Use only the first N chips (tests).")


class ModelConfig(Strict):
    """U-Net architecture. depth=2 with base_filters=64 is the seed's 10-conv U-Net; the CPU
    default trades filters for depth (a wider receptive field for large tailings ponds)."""

    base_filters: int = Field(16, ge=1)
    depth: int = Field(4, ge=1, le=5, description="Number of 2x down-sampling steps.")
    batch_norm: bool = True
    dropout: float = Field(0.1, ge=0, lt=1)

    @property
    def multiple(self) -> int:
        """Input height and width must be a multiple of this (the serving signature pads)."""
        return 2**self.depth


MODEL_PRESETS: dict[str, ModelConfig] = {
    # Sized to train within the local run's time on 2 CPU cores.
    "cpu": ModelConfig(),
    # The seed's architecture: 10 3x3 conv layers, 64/128/256 filters. Meant for a GPU.
    "seed": ModelConfig(base_filters=64, depth=2, batch_norm=False, dropout=0.0),
}


class TrainConfig(Strict):
    """Optimisation, sampling and augmentation."""

    epochs: int = Field(60, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="Default: one pass of crops.")
    batch_size: int = Field(8, ge=1, description="Global batch, split across GPUs if several.")
    learning_rate: float = Field(2e-3, gt=0)
    loss: LossName = "bce_dice"
    crop_size: int = Field(256, ge=8, description="Random training crops; validation uses chips.")
    positive_crop_fraction: float = Field(0.5, ge=0, le=1,
                                          description="Share of crops centred on tailings.")
    augment: bool = True
    brightness: float = Field(0.1, ge=0, description="Max relative brightness jitter.")
    contrast: float = Field(0.1, ge=0, description="Max relative contrast jitter.")
    saturation: float = Field(0.1, ge=0, description="Max relative saturation jitter.")
    early_stopping_patience: int = Field(20, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="Stop training after this time.")
    mixed_precision: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: mixed float16 on tensor-core GPUs, float32 on CPU.")
    seed: int = 42
    verbose: int = Field(1, ge=0, le=2)


class EvaluationConfig(Strict):
    """Test-split evaluation and the choice of the decision threshold."""

    threshold: float | Literal["best_val_iou"] = Field(
        "best_val_iou", description="A fixed threshold, or the one maximising validation IoU.")
    sweep: list[float] = Field(default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 20)])
    batch_size: int = Field(4, ge=1)
    panels: int = Field(3, ge=0, description="Best and worst test chips shown in the panels.")


class TuningConfig(Strict):
    """Hyperparameter search (Optuna, TPE sampler, median pruning on validation IoU)."""

    enabled: bool = False
    n_trials: int = Field(6, ge=1)
    timeout_minutes: float = Field(10.0, gt=0, description="Wall-time budget of the search.")
    epochs_per_trial: int = Field(8, ge=1)
    learning_rates: tuple[float, float] = (3e-4, 5e-3)
    batch_sizes: list[int] = Field(default_factory=lambda: [4, 8, 16])
    losses: list[LossName] = Field(default_factory=lambda: ["bce_dice"])
    base_filters: list[int] = Field(default_factory=list,
                                    description="Empty: keep the configured base filters.")
    seed: int = 42


class GateConfig(Strict):
    """Release decision: absolute thresholds and comparison with the production model."""

    min_iou: float = Field(0.3, ge=0, le=1)
    min_f1: float = Field(0.0, ge=0, le=1)
    min_recall: float = Field(0.0, ge=0, le=1)
    max_regression: float = Field(0.02, ge=0, description="Allowed IoU drop vs production.")
    min_improvement: float = Field(0.0, ge=0, description="Required IoU gain vs production.")
    promote_to: Literal["staging", "production"] = "production"


class ExportConfig(Strict):
    """Where exported versions go."""

    export_dir: str = "exports"
    model_name: str = Field("tailseg", pattern=r"^[A-Za-z0-9_.-]+$")
    onnx_opset: int = Field(17, ge=13)


class PredictConfig(Strict):
    """Whole-scene prediction: sliding windows, blending, outputs (see docs/prediction.md).

    Neighbouring windows overlap by `overlap` pixels. Each window's outer `margin` pixels on a
    side shared with a neighbour get weight 0 (the U-Net sees zero padding there), and the rest
    of the overlap is blended with a smooth sin^2 ramp whose weights sum to one. With a margin at
    least the U-Net's receptive-field radius (about 23 pixels at depth 2) and window offsets on
    its pooling grid (multiples of 16), the blended map does not depend on the tiling.
    """

    window: int = Field(1024, ge=32, multiple_of=16, description="Window side in pixels.")
    overlap: int = Field(128, ge=0, multiple_of=16, description="Overlap of neighbouring windows.")
    margin: int = Field(32, ge=0, description="Window border pixels discarded where windows meet.")
    batch_size: int | None = Field(None, ge=1, description="Windows per call; default from the "
                                                            "backend (pixel budget per batch).")
    convention: Convention = "auto"
    threshold: float | None = Field(None, gt=0, lt=1, description="Default: the model's, else 0.5.")
    connectivity: Literal[4, 8] = 4
    min_area_ha: float = Field(0.0, ge=0, description="Drop smaller sites from the GeoJSON.")
    overwrite: bool = False
    progress: bool = True

    @model_validator(mode="after")
    def _windows_fit(self) -> PredictConfig:
        if self.overlap >= self.window:
            raise ValueError(f"overlap {self.overlap} must be smaller than window {self.window}")
        if 2 * self.margin > self.overlap:
            raise ValueError(f"margin {self.margin} must be at most half the overlap "
                             f"{self.overlap}, or some pixels would get no weight")
        return self


class ChangeConfig(Strict):
    """Comparison of the tailings sites of two dates."""

    min_relative_change: float = Field(0.1, ge=0, description="Growth or shrinkage below this "
                                                              "share of the area is 'unchanged'.")
    min_change_ha: float = Field(0.0, ge=0, description="...and below this many hectares.")


class RunConfig(Strict):
    """Everything a training run needs, as read from the parameters of zenml.yaml."""

    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    model: ModelConfig = ModelConfig()
    model_preset: str | None = None
    training: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    tuning: TuningConfig = TuningConfig()
    gate: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _known_preset(self) -> RunConfig:
        if self.model_preset is not None and self.model_preset not in MODEL_PRESETS:
            raise ValueError(f"model_preset {self.model_preset!r} unknown; use one of "
                             f"{sorted(MODEL_PRESETS)}")
        return self

    def resolved_model(self) -> ModelConfig:
        """The model config, with a named preset taking precedence when given."""
        return MODEL_PRESETS[self.model_preset] if self.model_preset else self.model


def parse_config(values: dict[str, Any], source: str = "configuration") -> RunConfig:
    """Validate a parameters mapping, with an error that names the source and the bad keys."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(f"{source}: invalid tailseg parameters:\n{error}") from error


def load_run_yaml(path: str | Path) -> dict[str, Any]:
    """Read a ZenML run configuration file (zenml.yaml) as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: run configuration not found")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return content
