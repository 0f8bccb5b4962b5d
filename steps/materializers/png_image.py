"""PNG figures as artifacts, shown as images in the ZenML dashboard."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from tailseg.plots import PNGImage

FILENAME = "image.png"


class PNGImageMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (PNGImage,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def load(self, data_type: type[Any]) -> PNGImage:
        with fileio.open(os.path.join(self.uri, FILENAME), "rb") as file:
            return PNGImage(file.read())

    def save(self, data: PNGImage) -> None:
        with fileio.open(os.path.join(self.uri, FILENAME), "wb") as file:
            file.write(bytes(data))

    def save_visualizations(self, data: PNGImage) -> dict[str, VisualizationType]:
        return {os.path.join(self.uri, FILENAME): VisualizationType.IMAGE}
