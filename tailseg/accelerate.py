"""Accelerator set-up for training: mixed precision and the tf.distribute strategy.

The same code trains on a laptop CPU and on a GPU node of the cluster: with no GPU the policy
stays float32 and the default strategy is used; with one GPU the model lives on it, with several
a MirroredStrategy replicates it and the global batch grows with the replica count. Mixed
precision (float16 compute, float32 variables, automatic loss scaling in Keras 3 `compile`) is
turned on by default only for GPUs with tensor cores (compute capability 7.0 or higher).

Usage in training (the policy must be in force while the model is built and trained; the
plan leaves Keras' global policy as it was, so nothing after training runs in float16)::

    plan = plan_acceleration(config.mixed_precision)
    with dtype_policy(plan.policy):
        with plan.strategy.scope():
            model = build_unet(...)
            compile_model(model, ...)
        model.fit(dataset.batch(plan.global_batch_size(per_replica)), ...)

A model trained in mixed precision keeps float16 layers; the export rebuilds it in float32
(tailseg.export.float32_model), since serving and the ONNX parity check expect float32.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)
MixedPrecision = Literal["auto", "on", "off"]
MIXED_POLICY = "mixed_float16"
MIN_TENSOR_CORE_CAPABILITY = (7, 0)


def gpu_devices() -> list[Any]:
    """The physical GPUs TensorFlow sees (empty on CPU-only machines and CPU builds)."""
    return tf.config.list_physical_devices("GPU")


def _compute_capability(device: Any) -> tuple[int, int]:
    details = tf.config.experimental.get_device_details(device)
    return tuple(details.get("compute_capability") or (0, 0))


def choose_policy(enabled: MixedPrecision | bool = "auto", gpus: list[Any] | None = None
                  ) -> str:
    """The dtype policy name for the devices: MIXED_POLICY or "float32".

    Args:
        enabled: "auto" (mixed only on tensor-core GPUs), "on"/True (mixed everywhere, also on
            CPU where it is slow but numerically valid) or "off"/False (float32).
        gpus: the GPUs to consider; default: those TensorFlow sees.
    """
    if enabled not in ("auto", "on", "off", True, False):
        raise ValueError(f"mixed precision must be 'auto', 'on' or 'off', not {enabled!r}")
    gpus = gpu_devices() if gpus is None else gpus
    if enabled == "auto":
        capable = [gpu for gpu in gpus if _compute_capability(gpu) >= MIN_TENSOR_CORE_CAPABILITY]
        use_mixed = bool(gpus) and len(capable) == len(gpus)
    else:
        use_mixed = enabled in ("on", True)
    policy = MIXED_POLICY if use_mixed else "float32"
    logger.debug("dtype policy %s (%d GPU(s), mixed precision %s)", policy, len(gpus), enabled)
    return policy


def configure_precision(enabled: MixedPrecision | bool = "auto",
                        gpus: list[Any] | None = None) -> str:
    """Set Keras' global dtype policy to choose_policy's and return its name. It stays set:
    prefer dtype_policy, which restores the previous one."""
    policy = choose_policy(enabled, gpus)
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextmanager
def dtype_policy(policy: str) -> Iterator[str]:
    """Keras' global dtype policy set to policy inside the block, the previous one restored on
    the way out (also after an error)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def distribution_strategy(gpus: list[Any] | None = None) -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs, OneDeviceStrategy on one, the default on CPU."""
    gpus = gpu_devices() if gpus is None else gpus
    if len(gpus) > 1:
        names = [f"/gpu:{index}" for index in range(len(gpus))]
        return tf.distribute.MirroredStrategy(devices=names)
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.get_strategy()


def enable_memory_growth(gpus: list[Any] | None = None) -> None:
    """Let TensorFlow take GPU memory as needed (several trials share a GPU while tuning)."""
    for gpu in gpu_devices() if gpus is None else gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:  # GPUs already initialised: keep their setting.
            logger.debug("memory growth unchanged on %s: %s", gpu, error)


@dataclass(frozen=True)
class AccelerationPlan:
    """What training runs on: the strategy to build the model in and the dtype policy."""

    strategy: tf.distribute.Strategy
    policy: str
    n_gpus: int

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def global_batch_size(self, per_replica: int) -> int:
        """The batch given to fit(): every replica gets per_replica examples."""
        return per_replica * self.replicas

    def describe(self) -> dict[str, Any]:
        return {"strategy": type(self.strategy).__name__, "replicas": self.replicas,
                "policy": self.policy, "gpus": self.n_gpus}


def plan_acceleration(mixed_precision: MixedPrecision | bool = "auto",
                      gpus: list[Any] | None = None) -> AccelerationPlan:
    """Configure memory growth and choose the dtype policy and the strategy for the visible
    devices. The global dtype policy is left alone: build and train under
    dtype_policy(plan.policy)."""
    gpus = gpu_devices() if gpus is None else gpus
    enable_memory_growth(gpus)
    policy = choose_policy(mixed_precision, gpus)
    if gpus:
        logger.info("running on %d GPU(s), dtype policy %s", len(gpus), policy)
    else:
        logger.info("no GPU found: running on the CPU (%d cores, TF_CPU_ALLOCATOR_USE_BFC=%s)",
                    os.cpu_count() or 1, os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "unset"))
    return AccelerationPlan(distribution_strategy(gpus), policy, len(gpus))
