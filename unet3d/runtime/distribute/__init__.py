"""One distributed-training interface over tf.distribute and Horovod.

The training loop is written once against `DistributedContext` (`context.py`); two backends
implement it: `tf_distribute.py` (one device, MirroredStrategy, MultiWorkerMirroredStrategy)
and `horovod.py`. `process_env.py` reads rank and size from the launcher without importing
TensorFlow or Horovod. Usage::

    context = create_context(cfg.strategy, device_info)
    with context.scope():
        model = build_model(...)
        optimizer = wrap_optimizer(keras.optimizers.Adam(...), precision_info)
        optimizer.build(model.trainable_variables)
    context.broadcast_variables(model.variables + optimizer.variables)  # Horovod; no-op else
    dataset = context.distribute_dataset(lambda input_context: make_dataset(input_context))
    global_batch = context.global_batch_size(per_replica_batch)

    def step(images, labels):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            loss = per_sample_loss_sum(labels, probabilities) / global_batch
            scaled_loss = optimizer.scale_loss(loss)
        grads = context.gradients(tape, scaled_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(images, labels):
        return context.reduce_sum(context.run(step, (images, labels)))

Gradient convention (the same for every backend): each replica divides its loss by the GLOBAL
batch and the replicas' gradients are SUMMED, so the update equals one step on the global
batch. Under tf.distribute the Keras 3 optimizer sums the gradients inside `apply_gradients`
(so `gradients` returns per-replica gradients); under Horovod `gradients` all-reduces them with
`hvd.Sum` through `hvd.DistributedGradientTape`.

Importing this package imports neither TensorFlow nor Horovod.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from unet3d.runtime.devices import DeviceInfo
from unet3d.runtime.distribute.context import DistributedContext
from unet3d.runtime.distribute.process_env import (
    ProcessEnv,
    horovod_env,
    multi_worker_env,
    process_env,
    strategy_name,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "ProcessEnv",
    "create_context",
    "horovod_env",
    "multi_worker_env",
    "process_env",
]


def create_context(strategy_cfg: Mapping[str, Any], device_info: DeviceInfo) -> DistributedContext:
    """Create the distribution context from the `strategy` config section.

    Call after `configure_devices` and before any tensor or model exists (multi_worker sets up
    collectives, which TensorFlow allows only at start-up).

    Names: auto (one device: OneDeviceStrategy; several: MirroredStrategy), mirrored,
    multi_worker (MultiWorkerMirroredStrategy, cluster from TF_CONFIG or SLURM), horovod.

    Args:
        strategy_cfg: the `strategy` section (name; cluster_resolver and communication for
            multi_worker).
        device_info: the configured devices (`configure_devices`).

    Raises:
        ConfigError: unknown strategy.name, cluster_resolver or communication.
        DeviceError: Horovod missing, or the multi-worker cluster is not described.
    """
    name = strategy_name(strategy_cfg)
    context: DistributedContext
    if name == "horovod":
        from unet3d.runtime.distribute.horovod import create_horovod_context

        context = create_horovod_context(device_info)
    else:
        from unet3d.runtime.distribute.tf_distribute import create_tf_distribute_context

        context = create_tf_distribute_context(name, strategy_cfg, device_info)
    logger.info("strategy: %r", context)
    return context
