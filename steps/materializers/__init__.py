"""ZenML materializers for tailseg's artifact types (no pickling)."""

from steps.materializers.keras_model import KerasModelMaterializer
from steps.materializers.png_image import PNGImageMaterializer

__all__ = ["KerasModelMaterializer", "PNGImageMaterializer"]
