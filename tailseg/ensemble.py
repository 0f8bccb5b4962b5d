"""An ensemble of U-Nets as one Keras model: the mean of its members' probabilities.

`training.members` U-Nets are trained on the same chips with seeds training.seed,
training.seed + 1, ... (tailseg.train.train_members); averaging models that differ only in
their initialisation, crops and augmentation cancels part of each one's errors. The ensemble
is one Functional model (input -> each member -> mean), so everything downstream (evaluation,
the serving function, the SavedModel, ONNX, the ZenML artifact) handles it as a single model,
at members times the prediction cost.
"""

from __future__ import annotations

import keras

from tailseg.constants import BANDS

ENSEMBLE_NAME = "tailseg_ensemble"


def average_models(models: list[keras.Model]) -> keras.Model:
    """One model whose output is the mean of models' outputs (model itself for one); the
    members are named member<i> within it (layer names must be unique).

    Raises:
        ValueError: no models.
    """
    if not models:
        raise ValueError("an ensemble needs at least one model")
    if len(models) == 1:
        return models[0]
    # Uncompiled views of the members (same layers and weights): a member saved with its
    # training loss and metrics would need them registered to load, even with compile=False.
    members = [keras.Model(model.inputs[0], model.outputs[0], name=f"member{index}")
               for index, model in enumerate(models)]
    image = keras.Input(shape=(None, None, len(BANDS)), name="image")
    mean = keras.layers.Average(name="probability", dtype="float32")(
        [member(image) for member in members])
    return keras.Model(image, mean, name=ENSEMBLE_NAME)


def members_of(model: keras.Model) -> list[keras.Model]:
    """The U-Nets of an ensemble built by average_models, or [model] for a single U-Net."""
    if model.name != ENSEMBLE_NAME:
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]
