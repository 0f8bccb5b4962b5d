"""Typed, strict configuration. Defaults live here; values come from zenml.yaml.

Every model forbids unknown keys, so a typo in zenml.yaml fails loudly at the start of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tailseg.constants import MIN_SITE_AREA_HA, Convention
from tailseg.errors import ConfigError
from tailseg.validation.config import ValidationConfig

LossName = Literal["bce", "dice", "bce_dice", "focal", "focal_dice", "tversky", "lovasz",
                   "bce_lovasz", "power_jaccard", "bce_power_jaccard"]


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
    # Chips that share ground (tailseg.overlaps): "merge" keeps each group in one part of the
    # split and gives every chip the labels of the chips overlapping it; "group" only groups;
    # "ignore" treats each chip alone (the behaviour before 2026-11-29).
    overlaps: Literal["merge", "group", "ignore"] = "merge"


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
    batch_size: int = Field(8, ge=1, description="Crops per step and replica: the global "
                            "batch is this times the GPUs (tailseg.train.global_batches).")
    learning_rate: float = Field(2e-3, gt=0)
    loss: LossName = "bce_dice"
    tversky_alpha: float = Field(0.7, ge=0, description="Tversky loss: weight of false "
                                 "positives; above tversky_beta it trades recall for precision.")
    tversky_beta: float = Field(0.3, ge=0, description="Tversky loss: weight of false negatives.")
    crop_size: int = Field(256, ge=8, description="Random training crops; validation uses chips.")
    positive_crop_fraction: float = Field(
        0.5, ge=0, le=1, description="Share of crops placed to contain tailings: a random "
                                     "tailings pixel at a random position in the crop.")
    augment: bool = True
    brightness: float = Field(0.1, ge=0, description="Max relative brightness jitter.")
    contrast: float = Field(0.1, ge=0, description="Max relative contrast jitter.")
    saturation: float = Field(0.1, ge=0, description="Max relative saturation jitter.")
    early_stopping_patience: int = Field(20, ge=1, description="Stop after this many epochs "
                                         "without a better candidate (see restore_from).")
    restore_from: float = Field(
        0.0, ge=0, le=1, description="Keep the weights of the best validation-IoU epoch among "
                                     "those that end with the learning-rate decay at least this "
                                     "far done (0: any epoch; 1: the last planned epoch); "
                                     "early stopping counts from the first such epoch.")
    weight_average: float | None = Field(
        None, gt=0, lt=1, description="Momentum of an exponential moving average of the "
                                      "weights (Polyak averaging; e.g. 0.99): validation, the "
                                      "kept epoch and the exported model use the averaged "
                                      "weights. None: the raw weights.")
    max_minutes: float | None = Field(
        None, gt=0, description="Training time budget: the number of epochs (at most `epochs`) "
                                "and the learning-rate decay are planned to fit it "
                                "(tailseg/budget.py); a run cut by it says so.")
    mixed_precision: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: mixed float16 on tensor-core GPUs, float32 on CPU.")
    members: int = Field(
        1, ge=1, le=8, description="U-Nets trained with seeds seed, seed + 1, ... and an equal "
                                   "share of max_minutes; the exported model averages their "
                                   "probabilities (tailseg/ensemble.py), at members times the "
                                   "prediction cost.")
    seed: int = 42
    verbose: int = Field(1, ge=0, le=2)


class EvaluationConfig(Strict):
    """Test-split evaluation and the choice of the decision threshold."""

    threshold: float | Literal["best_val_iou"] = Field(
        "best_val_iou", description="A fixed threshold, or the one maximising validation IoU.")
    # Fine steps near 0 and 1 as well: a model can be confident enough that its best threshold
    # lies beyond 0.95; a choice at either end of the sweep is logged as a warning.
    sweep: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.01, 0.02] + [round(0.05 * i, 2) for i in range(1, 20)]
        + [0.98, 0.99], min_length=1)
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
    # Where the exporter also copies each version (serving/<name>/<v>/, onnx/<name>/<v>/),
    # e.g. s3://bucket/model-repository, for pods without a persistent export_dir (Kubeflow).
    repository_uri: str | None = Field(None, pattern=r"^(s3|gs|az|abfs)://[^/]+(/.*)?$")


class PredictConfig(Strict):
    """Whole-scene prediction: sliding windows, blending, outputs (see docs/prediction.md).

    Neighbouring windows overlap by `overlap` pixels. Each window's outer `margin` pixels on a
    side shared with a neighbour get weight 0 (the U-Net sees zero padding there), and the rest
    of the overlap is blended with a smooth sin^2 ramp whose weights sum to one. With a margin at
    least the U-Net's receptive-field radius and window offsets on its pooling grid (multiples
    of 16), the blended map does not depend on the tiling. margin and overlap default (None) to
    values derived from the receptive field measured on the loaded model (tailseg.receptive):
    112 and 256 for the depth-4 U-Net.
    """

    window: int = Field(1024, ge=32, multiple_of=16, description="Window side in pixels.")
    overlap: int | None = Field(None, ge=0, multiple_of=16, description="Overlap of neighbouring "
                                "windows; default from the model's receptive field.")
    margin: int | None = Field(None, ge=0, description="Window border pixels discarded where "
                               "windows meet; default from the model's receptive field.")
    batch_size: int | None = Field(None, ge=1, description="Windows per call; default from the "
                                                            "backend (pixel budget per batch).")
    convention: Convention = "auto"
    force: bool = Field(False, description="Predict even when the radiometric check refuses "
                                           "the convention (tailseg.radiometry).")
    bands: tuple[Literal["B2", "B3", "B4"], ...] | None = Field(
        None, min_length=3, max_length=3, description="The file's band order, e.g. (B4, B3, B2); "
        "None: B2, B3, B4 (checked against band descriptions when present).")
    threshold: float | None = Field(None, gt=0, lt=1, description="Default: the model's, else 0.5.")
    connectivity: Literal[4, 8] = 4
    min_area_ha: float = Field(MIN_SITE_AREA_HA, ge=0, description="Drop smaller sites from the "
                                                                  "polygons (see constants).")
    vector_format: Literal["geojson", "gpkg"] = Field(
        "geojson", description="Site polygons as RFC 7946 GeoJSON or as an OGC GeoPackage.")
    overwrite: bool = False
    progress: bool = True

    @model_validator(mode="after")
    def _windows_fit(self) -> PredictConfig:
        if self.bands is not None and sorted(self.bands) != ["B2", "B3", "B4"]:
            raise ValueError(f"bands {self.bands} must name B2, B3 and B4 once each")
        if self.overlap is None or self.margin is None:
            return self  # completed from the model's receptive field, then validated again
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
    min_area_ha: float = Field(MIN_SITE_AREA_HA, ge=0, description="Sites smaller than this in "
                               "either input are ignored, as prediction drops them.")


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
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file ({error}); save it as UTF-8"
                          ) from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return content


def run_parameters(run_yaml: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """The tailseg parameters of a run configuration: its `parameters.config` mapping ({} when
    either level is absent or empty).

    Raises:
        ConfigError: `parameters` or `parameters.config` is not a mapping.
    """
    parameters = run_yaml.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ConfigError(f"{source}: 'parameters' must be a mapping with a 'config' key, got "
                          f"{type(parameters).__name__} {parameters!r:.60}")
    config = parameters.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: 'parameters.config' must be a mapping of tailseg "
                          f"settings (data, model, training, ...), got {type(config).__name__} "
                          f"{config!r:.60}")
    return config
