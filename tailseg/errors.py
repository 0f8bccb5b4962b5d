"""Typed domain errors. Each message names the file and the problem, and says how to fix it."""


class TailsegError(Exception):
    """Base class of tailseg's own errors."""


class RasterReadError(TailsegError, OSError):
    """A raster file is missing, unreadable or not a GeoTIFF."""


class BandCountError(TailsegError, ValueError):
    """An image has the wrong number of bands."""


class BandOrderError(TailsegError, ValueError):
    """An image's band descriptions do not match B2, B3, B4."""


class ReflectanceConventionError(TailsegError, ValueError):
    """Raw values cannot be turned into reflectance without an explicit convention."""


class PairingError(TailsegError, ValueError):
    """An image has no mask, or a mask has no image."""


class DatasetNotFoundError(TailsegError, FileNotFoundError):
    """The dataset folder or its images/ and masks/ sub-folders do not exist."""


class DatasetValidationError(TailsegError, ValueError):
    """The dataset failed validation; the message lists chips and checks."""


class ModelFormatError(TailsegError, ValueError):
    """A model path is neither a SavedModel, a TF Serving base path nor an .onnx file."""


class ExportError(TailsegError, RuntimeError):
    """A model could not be exported (e.g. the ONNX conversion failed)."""


class ConfigError(TailsegError, ValueError):
    """The run configuration is invalid."""


class ParityError(TailsegError, ValueError):
    """TensorFlow and ONNX Runtime outputs of an export differ beyond the tolerance."""


class InfraValidationError(TailsegError, RuntimeError):
    """An exported version failed to load or to answer its warm-up requests in a fresh process."""


class ServingRequestError(TailsegError, ValueError):
    """A serving request is invalid or names an unknown model, version or label.

    `code` is the gRPC status name TF Serving would answer with (INVALID_ARGUMENT, NOT_FOUND, ...).
    """

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.code = code


class ServingClientError(TailsegError, ConnectionError):
    """A model server answered with an error or could not be reached after the retries.

    `status` is the HTTP status or gRPC status name of the last answer (None: no answer).
    """

    def __init__(self, message: str, status: int | str | None = None):
        super().__init__(message)
        self.status = status


class OutputExistsError(TailsegError, FileExistsError):
    """An output file exists already and overwriting was not asked for."""


class OutputWriteError(TailsegError, OSError):
    """An output folder cannot be created or written (not a folder, permissions, disk full)."""


class CRSMissingError(TailsegError, ValueError):
    """A scene has no coordinate reference system, so its outputs cannot be georeferenced."""


class PredictionInterrupted(KeyboardInterrupt):
    """A run was stopped by SIGINT or SIGTERM; `signal` is the signal's number."""

    def __init__(self, signal: int):
        super().__init__(f"interrupted by signal {signal}")
        self.signal = signal


class VectorReadError(TailsegError, ValueError):
    """A GeoJSON file is missing, unreadable or not a FeatureCollection of polygons."""


class CoverageError(TailsegError, ValueError):
    """A nodata mask does not belong to the sites it should give the observed area of."""


class ScheduleError(TailsegError, ValueError):
    """A retraining schedule is invalid or the orchestrator cannot run on a schedule."""


class StackConfigError(TailsegError, ValueError):
    """A ZenML stack file under infra/zenml/ is invalid."""


class SplitError(TailsegError, ValueError):
    """The train/validation/test split leaves a part without chips."""


class ProductionModelError(TailsegError, LookupError):
    """The production model version lacks what the gate needs (its model or its split)."""
