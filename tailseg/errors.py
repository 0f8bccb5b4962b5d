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


class ConfigError(TailsegError, ValueError):
    """The run configuration is invalid."""
