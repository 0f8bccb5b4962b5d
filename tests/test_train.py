"""The training loop's release rules on a tiny U-Net: the best epoch's weights are the ones
returned (among the epochs from restore_from of the decay on), early stopping counts from there,
the configured loss is the one trained with, and validation chips may differ in size."""

import keras
import numpy as np
import pytest

from tailseg.config import ModelConfig, TrainConfig
from tailseg.dataset import load_chips, require_pairs
from tailseg.train import pick_epoch, train_model
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
                         verbose=0, early_stopping_patience=5, restore_from=0.0)
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


def test_pick_epoch_takes_the_best_validation_iou_once_the_decay_is_far_enough():
    values = [0.52, 0.30, 0.44, 0.44, 0.41]
    progress = [0.2, 0.4, 0.6, 0.8, 1.0]
    assert pick_epoch(values, progress, 0.0) == 0        # any epoch: the early peak
    assert pick_epoch(values, progress, 0.5) == 2        # from half the decay; first of a tie
    assert pick_epoch(values, progress, 0.8) == 3        # progress exactly at the bound counts
    assert pick_epoch(values, progress, 1.0) == 4        # the end of the decay
    # A run cut before the bound (a time budget ran out) keeps the best of what it has.
    assert pick_epoch(values[:2], progress[:2], 0.5) == 0
    with pytest.raises(ValueError, match="2 validation values for 3 epochs"):
        pick_epoch([0.1, 0.2], [0.3, 0.6, 1.0], 0.5)


class _Progress:
    """Stands in for the BudgetSchedule's record: only epoch_progress is read."""

    epoch_progress = 0.0


@pytest.mark.parametrize(("restore_from", "kept"), [(0.0, 0), (0.5, 2), (0.7, 3), (1.0, 0)])
def test_best_weights_keeps_pick_epochs_choice_and_falls_back_to_any_epoch(restore_from, kept):
    # Four epochs (0-based below), the schedule cut at 75 % (a budget ran out): from half the
    # decay the first of the tied later peaks is kept; with restore_from 1.0 no epoch
    # qualifies, and the best of all epochs (the early peak) is kept.
    from tailseg.train import _BestWeights

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    progress = _Progress()
    callback = _BestWeights(progress, restore_from, patience=10)
    callback.set_model(model)
    values, fractions = [0.6, 0.3, 0.5, 0.5], [0.25, 0.5, 0.6, 0.75]
    for epoch, (value, done) in enumerate(zip(values, fractions, strict=True)):
        model.layers[0].set_weights([np.full((1, 1), float(epoch)), np.zeros(1)])
        progress.epoch_progress = done
        callback.on_epoch_end(epoch, {"val_iou": value})
    callback.on_train_end()
    assert callback.best_epoch == kept == pick_epoch(values, fractions, restore_from)
    assert model.layers[0].get_weights()[0][0, 0] == kept  # that epoch's weights restored


def test_best_weights_does_not_stop_on_an_early_peak_before_restore_from():
    # Patience 1, the validation peak at epoch 0 (a quarter into the decay), restore_from 0.75:
    # epochs 1 and 2 are worse than the peak but count for nothing until the decay is 75 %
    # done, so the run reaches epoch 2 (the first candidate) and stops one epoch after it.
    from tailseg.train import _BestWeights

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    progress = _Progress()
    callback = _BestWeights(progress, restore_from=0.75, patience=1)
    callback.set_model(model)
    model.stop_training = False
    stopped_after = []
    for epoch, (value, done) in enumerate(zip([0.9, 0.2, 0.3, 0.3], [0.25, 0.5, 0.75, 1.0],
                                              strict=True)):
        progress.epoch_progress = done
        callback.on_epoch_end(epoch, {"val_iou": value})
        if model.stop_training:
            stopped_after.append(epoch)
            model.stop_training = False
    assert stopped_after == [3]
    assert callback.best_epoch == 2


def _constant_head_run(tmp_path, epochs: int, restore_from: float, patience: int):
    train, _ = load_chips(require_pairs(make_dataset(tmp_path / "a", n_chips=2, size=32, seed=1)))
    val, _ = load_chips(require_pairs(make_dataset(tmp_path / "b", n_chips=1, size=32, seed=2)))
    config = TrainConfig(epochs=epochs, steps_per_epoch=1, batch_size=2, crop_size=32,
                         verbose=0, early_stopping_patience=patience, restore_from=restore_from)
    result = train_model(train, val, ModelConfig(base_filters=2, depth=2, dropout=0), config,
                         extra_callbacks=[_ConstantHead()])
    return result, val


def test_an_early_peak_before_restore_from_is_not_kept(tmp_path):
    # Epoch 1 has the best validation IoU but ends a third into the decay: with restore_from
    # 0.5 the kept weights are epoch 2's (the first of the tied later epochs), not epoch 1's.
    result, val = _constant_head_run(tmp_path, epochs=3, restore_from=0.5, patience=5)
    assert result.history["val_iou"][0] > 0 and result.history["val_iou"][1:] == [0.0, 0.0]
    assert result.best_epoch == 2
    assert result.model.predict(val[0].image[None], verbose=0).max() < 0.01  # epoch 2's head


def test_early_stopping_counts_only_from_restore_from(tmp_path):
    # Patience 2 after epoch 1's peak: counted from any epoch, the run stops after epoch 3;
    # counted from the first epoch at half the decay (epoch 3 of 6), after epoch 5.
    anywhere, _ = _constant_head_run(tmp_path / "any", epochs=6, restore_from=0.0, patience=2)
    late, _ = _constant_head_run(tmp_path / "late", epochs=6, restore_from=0.5, patience=2)
    assert len(anywhere.history["val_iou"]) == 3 and anywhere.best_epoch == 1
    assert anywhere.info["stop_reason"] == "early_stopping"
    assert len(late.history["val_iou"]) == 5 and late.best_epoch == 3


def test_training_uses_the_configured_loss(trained):
    result, _ = trained
    loss = float(np.mean(np.asarray(result.model.loss(Y_TRUE, Y_PRED))))
    assert loss == pytest.approx(HAND["focal"], rel=1e-5)


# Run in its own process: the CPU is split into two logical devices before TensorFlow starts,
# which would leave every other test with a MirroredStrategy-ready CPU it did not ask for.
MIRRORED = """
import json, sys, tempfile
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras

from tailseg.accelerate import AccelerationPlan
from tailseg.config import ModelConfig, TrainConfig
from tailseg.dataset import load_chips, require_pairs, training_dataset
from tailseg.train import global_batches, train_model
from tests.rasters import make_dataset


class SamplesSeen(keras.callbacks.Callback):
    # Keras' loss tracker counts the examples of every step, over all replicas.
    seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(int(self.model._loss_tracker.count.numpy()))


chips, _ = load_chips(require_pairs(make_dataset(Path(tempfile.mkdtemp()), n_chips=8, size=64,
                                                 seed=1)))
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
plan = AccelerationPlan(strategy, "float32", 0)
config = TrainConfig(epochs=1, batch_size=3, crop_size=32, verbose=0)
images, _ = next(iter(strategy.experimental_distribute_dataset(
    training_dataset(chips, global_batches(config, plan)))))
samples = SamplesSeen()
# 3 training chips of 64 x 64 are 12 crops of 32 x 32: 2 steps of 2 x 3 crops. 5 validation
# chips on 2 replicas: 4 validated, in one batch of 2 per replica.
result = train_model(chips[:3], chips[3:], ModelConfig(base_filters=2, depth=2, dropout=0),
                     config, extra_callbacks=[samples], plan=plan)
replica_batches = [int(t.shape[0]) for t in strategy.experimental_local_results(images)]
json.dump({"replica_batches": replica_batches, "samples_seen": samples.seen, "info": result.info,
           "val_iou": result.history["val_iou"]}, sys.stdout)
"""


def test_mirrored_training_takes_the_batch_size_per_replica():
    """config.batch_size is per replica: on 2 replicas a step takes 2 x batch_size crops and an
    epoch half the steps. About 25 s on 2 cores, most of it importing TensorFlow."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                          cwd=root, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout)
    assert outcome["replica_batches"] == [3, 3]
    assert outcome["samples_seen"] == [6, 12]
    info = outcome["info"]
    assert (info["accelerator_replicas"], info["global_batch_size"]) == (2, 6)
    assert info["steps_per_epoch"] == 2
    assert np.isfinite(outcome["val_iou"]).all()


class _WeightLog(keras.callbacks.Callback):
    """Records the probability layer's kernel after every training batch (the raw weights the
    optimizer just updated) and at every validation (the weights validated)."""

    def __init__(self):
        super().__init__()
        self.start, self.raw, self.validated = [], [], []
        self.start_statistics, self.raw_statistics, self.validated_statistics = [], [], []

    def _kernel(self):
        return self.model.get_layer("probability").get_weights()[0].copy()

    def _statistics(self):
        layer = self.model.get_layer("dec0_bn2")  # the last batch normalisation
        return np.concatenate([layer.moving_mean.numpy(), layer.moving_variance.numpy()])

    def on_train_batch_begin(self, batch, logs=None):
        self.start.append(self._kernel())
        self.start_statistics.append(self._statistics())

    def on_train_batch_end(self, batch, logs=None):
        self.raw.append(self._kernel())
        self.raw_statistics.append(self._statistics())

    def on_test_begin(self, logs=None):  # after the swap callback, which runs first
        self.validated.append(self._kernel())
        self.validated_statistics.append(self._statistics())


def test_weight_average_is_what_is_validated_and_kept(tmp_path):
    # One step per epoch, momentum 0.9: the average after step t is 0.9 * the average after
    # step t - 1 + 0.1 * the raw weights after step t (the raw weights after step 1). A
    # momentum away from 0.5 tells that rule from its mirror image (0.1 * average + 0.9 *
    # raw), in the optimizer's average and in the batch-normalisation one. Validation sees
    # that average, not the raw weights; the kept model is the best epoch's average, and the
    # next epoch trains on from the raw weights.
    momentum = 0.9
    train, _ = load_chips(require_pairs(make_dataset(tmp_path / "a", n_chips=2, size=32, seed=1)))
    val, _ = load_chips(require_pairs(make_dataset(tmp_path / "b", n_chips=1, size=32, seed=2)))
    config = TrainConfig(epochs=4, steps_per_epoch=1, batch_size=2, crop_size=32, verbose=0,
                         learning_rate=0.05, weight_average=momentum)
    log = _WeightLog()
    result = train_model(train, val, ModelConfig(base_filters=2, depth=2, dropout=0), config,
                         extra_callbacks=[log])
    for raw, validated, start, kept in (
            (log.raw, log.validated, log.start,
             result.model.get_layer("probability").get_weights()[0]),
            (log.raw_statistics, log.validated_statistics, log.start_statistics,
             np.concatenate([result.model.get_layer("dec0_bn2").moving_mean.numpy(),
                             result.model.get_layer("dec0_bn2").moving_variance.numpy()]))):
        assert len(raw) == len(validated) == 4
        averages = [raw[0]]
        for step in range(1, 4):
            averages.append(momentum * averages[-1] + (1 - momentum) * raw[step])
        for step in range(4):
            np.testing.assert_allclose(validated[step], averages[step], rtol=1e-5, atol=1e-7)
            if step:
                assert not np.allclose(validated[step], raw[step])  # the average, not the raw
                # Training goes on from the raw weights, not from the average validated last
                # (up to the rounding of the in-place swap's adds and subtracts).
                np.testing.assert_allclose(start[step], raw[step - 1], rtol=1e-6, atol=1e-7)
            if step > 1:
                assert not np.allclose(start[step], validated[step - 1])
        # The kept model is the rule's average at the best epoch: weights and statistics.
        np.testing.assert_allclose(kept, averages[result.best_epoch - 1], rtol=1e-5, atol=1e-7)


def test_keras_averages_only_trainable_weights_so_batch_statistics_need_their_own_average():
    # The rule of Keras 3 that SwapAveragedWeights exists for: with use_ema, the optimizer's
    # average covers trainable variables only, and SwapEMAWeights swaps only those, so the
    # batch-normalisation statistics validated are the raw ones. If Keras starts averaging
    # them, SwapAveragedWeights would average twice: this test then fails.
    from tailseg.model import build_unet

    model = build_unet(ModelConfig(base_filters=2, depth=1, dropout=0), np.zeros(3), np.ones(3))
    model.compile(optimizer=keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5),
                  loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((2, 8, 8, 3), dtype=np.float32)
    y = (rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32)
    log = _WeightLog()
    model.fit(x, y, validation_data=(x, y), epochs=3, batch_size=2, verbose=0,
              callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True), log])
    for step in (1, 2):
        assert not np.allclose(log.validated[step], log.raw[step])  # weights: averaged
        np.testing.assert_array_equal(log.validated_statistics[step],
                                      log.raw_statistics[step])  # statistics: raw
