"""A Keras 3 materializer: the native .keras format, copied through a temporary directory so
it works with remote artifact stores. ZenML's own TensorFlow integration targets Keras 2."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import keras
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from tailseg.ensemble import members_of

FILENAME = "model.keras"


class KerasModelMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (keras.Model,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def load(self, data_type: type[Any]) -> keras.Model:
        with self.get_temporary_directory(delete_at_exit=True) as directory:
            local = os.path.join(directory, FILENAME)
            fileio.copy(os.path.join(self.uri, FILENAME), local)
            return keras.saving.load_model(local, compile=False)

    def save(self, data: keras.Model) -> None:
        with self.get_temporary_directory(delete_at_exit=True) as directory:
            local = os.path.join(directory, FILENAME)
            data.save(local)
            fileio.copy(local, os.path.join(self.uri, FILENAME), overwrite=True)

    def extract_metadata(self, data: keras.Model) -> dict[str, Any]:
        members = members_of(data)
        return {"parameters": int(data.count_params()), "members": len(members),
                "layers": sum(len(member.layers) for member in members),
                "input_shape": str(data.input_shape), "output_shape": str(data.output_shape)}
