"""The training loop's release rules on a tiny U-Net: the best epoch's weights are the ones
returned, the configured loss is the one trained with, and validation chips may differ in size."""

import keras
import numpy as np
import pytest

from tailseg.config import ModelConfig, TrainConfig
from tailseg.dataset import load_chips, require_pairs
from tailseg.train import train_model
from tests.rasters import make_dataset
from tests.test_losses import HAND, Y_PRED, Y_TRUE


class _ConstantHead(keras.callbacks.Callback):
    """After every training batch, make the output layer a constant: tailings everywhere in
    epoch 1, nowhere afterwards. Epoch 1 then has the best validation IoU (the tailings share
    of the validation pixels; later epochs score 0) but is not the last epoch."""

    epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        head = self.model.get_layer("probability")
        kernel, bias = head.get_weights()
        head.set_weights([np.zeros_like(kernel),
                          np.full_like(bias, 10.0 if self.epoch == 0 else -10.0)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    train, _ = load_chips(require_pairs(make_dataset(root / "a", n_chips=2, size=32, seed=1)))
    small, _ = load_chips(require_pairs(make_dataset(root / "b", n_chips=1, size=32, seed=2)))
    large, _ = load_chips(require_pairs(make_dataset(root / "c", n_chips=1, size=48, seed=3)))
    config = TrainConfig(epochs=3, steps_per_epoch=1, batch_size=2, crop_size=32, loss="focal",
                         verbose=0, early_stopping_patience=5)
    val = small + large
    result = train_model(train, val, ModelConfig(base_filters=2, depth=2, dropout=0), config,
                         extra_callbacks=[_ConstantHead()])
    return result, val


def test_validation_chips_of_different_sizes_are_validated_whole(trained):
    result, val = trained
    assert [c.mask.shape for c in val] == [(32, 32), (48, 48)]
    tailings_share = sum(c.mask.sum() for c in val) / sum(c.mask.size for c in val)
    assert result.history["val_iou"][0] == pytest.approx(tailings_share, rel=1e-4)
    assert result.history["val_iou"][1:] == [0.0, 0.0]


def test_the_best_epochs_weights_are_restored(trained):
    result, val = trained
    assert result.best_epoch == 1 and len(result.history["val_iou"]) == 3
    for chip in val:
        probability = result.model.predict(chip.image[None], verbose=0)
        assert probability.min() > 0.99  # epoch 1's head, not the last epoch's


def test_training_uses_the_configured_loss(trained):
    result, _ = trained
    loss = float(np.mean(np.asarray(result.model.loss(Y_TRUE, Y_PRED))))
    assert loss == pytest.approx(HAND["focal"], rel=1e-5)
