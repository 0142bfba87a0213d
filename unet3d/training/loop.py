"""The one custom training loop, shared by every strategy (tf.distribute and Horovod).

Reading order, top to bottom:
1. the model and optimizer exist (built by the runner inside ``context.scope()``);
2. the optimizer's variables are built and the newest checkpoint is restored when resuming
   (under Horovod by rank 0 only);
3. Horovod broadcasts rank 0's variables and step (after the build and after a restore); the
   runner's ``on_restored`` then commits the run folder (a resume writes nothing before);
4. the input pipeline starts, seeded with (seed, first step) so a resumed run sees new crops;
5. each step: forward, loss / global batch, gradients (all-reduced by the strategy or by
   Horovod's tape), optimizer update; every ``log_every`` steps a progress line and metrics;
   every ``checkpoint_every`` steps and at the end a checkpoint; finally every rank logs a
   checksum of its weights (equal on all ranks when gradients were averaged).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from unet3d.data.pipeline import train_dataset
from unet3d.errors import CheckpointError
from unet3d.model.losses import make_loss_fn
from unet3d.training.checkpoint import CHECKPOINT_FOLDER, Checkpointer, build_optimizer_variables
from unet3d.training.optimizer import current_learning_rate

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) training run reports."""

    first_step: int
    last_step: int
    checkpoint: str | None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    volumes_per_second: float = float("nan")


def total_steps(cfg: DictConfig, world_size: int) -> int:
    """Steps this run trains for; under Horovod ``max_steps`` is divided by the world size."""
    steps = int(cfg.training.max_steps)
    if cfg.strategy.name == "horovod" and cfg.strategy.get("divide_steps_by_world_size", True):
        steps = max(1, steps // max(world_size, 1))
    return steps


def make_dataset_fn(cfg: DictConfig, train_files: list[str],
                    seed: int) -> Callable[[Any], tf.data.Dataset]:
    """``dataset_fn(input_context)`` of the training input (per-replica batches, sharded).

    Shared by ``train`` and ``mode=benchmark`` so that both measure the same pipeline.
    """

    def dataset_fn(input_context: Any = None) -> tf.data.Dataset:
        return train_dataset(
            train_files,
            crop_size=tuple(cfg.data.crop_size),
            batch_size=int(cfg.data.batch_size),
            augment=bool(cfg.data.augment),
            seed=seed,
            foreground_probability=float(cfg.data.foreground_probability),
            shuffle_buffer=int(cfg.data.shuffle_buffer),
            cache=bool(cfg.data.cache),
            input_context=input_context,
        )

    return dataset_fn


def make_train_step(context: Any, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    loss_fn: Callable, global_batch: int, jit_compile: bool = False) -> Callable:
    """A compiled distributed step: returns (loss, dice_loss, ce_loss) averaged globally."""
    scales_loss = hasattr(optimizer, "scale_loss") and isinstance(
        optimizer, keras.mixed_precision.LossScaleOptimizer
    )

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_sample, parts = loss_fn(labels, probabilities)
            loss = tf.reduce_sum(per_sample) / global_batch
            scaled = optimizer.scale_loss(loss) if scales_loss else loss
        variables = model.trainable_variables
        gradients = context.gradients(tape, scaled, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return (
            loss,
            tf.reduce_sum(parts["dice_loss"]) / global_batch,
            tf.reduce_sum(parts["ce_loss"]) / global_batch,
        )

    def step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
        per_replica = context.run(replica_step, (images, labels))
        return tuple(context.reduce_sum(value) for value in per_replica)

    return tf.function(step, jit_compile=jit_compile, reduce_retracing=True)


def train(cfg: DictConfig, context: Any, model: keras.Model,
          optimizer: keras.optimizers.Optimizer, train_files: list[str], output_dir: Path,
          tracker: Any, jit_compile: bool = False,
          on_restored: Callable[[], None] | None = None) -> TrainResult:
    """Train ``model`` on ``train_files`` to the configured step count; see the module doc.

    ``on_restored`` is called once the state is ready (after the restore and broadcast of a
    resume, before the first step): the runner commits the run folder and opens the MLflow run
    there, so that a resume whose checkpoint does not restore changes nothing.
    """
    steps = total_steps(cfg, context.world_size)
    with context.scope():
        step_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        build_optimizer_variables(model, optimizer)
    checkpointer = Checkpointer(
        output_dir / CHECKPOINT_FOLDER, model, optimizer, step_variable,
        keep=int(cfg.training.keep_checkpoints), is_chief=context.is_chief,
        must_participate=context.name == "multi_worker", worker_index=context.rank,
    )
    # Under Horovod rank 0 restores and broadcasts everything, the step included (the other
    # ranks need not see its files); tf.distribute workers each restore the same checkpoint.
    if cfg.resume and (context.is_chief or not context.uses_horovod):
        latest = checkpointer.latest()
        if latest:
            checkpointer.restore(latest)
        else:
            raise CheckpointError(
                f"resume: no checkpoint in {checkpointer.directory}; point hydra.run.dir at "
                "the run to resume, or drop resume=true to start a new run"
            )
    context.broadcast_variables([step_variable, *model.variables, *optimizer.variables])
    first_step = int(step_variable.numpy())
    if on_restored is not None:
        on_restored()
    if steps != int(cfg.training.max_steps) and context.is_chief:
        log.info("training.max_steps=%d divided by %d Horovod processes: %d steps per process",
                 int(cfg.training.max_steps), context.world_size, steps)
    if first_step >= steps:
        log.info("checkpoint is at step %d >= %d steps: nothing to train", first_step, steps)
        return TrainResult(first_step, first_step, checkpointer.latest())

    per_replica_batch = int(cfg.data.batch_size)
    global_batch = context.global_batch_size(per_replica_batch)
    volumes_per_step = global_batch

    dataset_fn = make_dataset_fn(cfg, train_files, seed=int(cfg.seed) + first_step)
    iterator = iter(context.distribute_dataset(dataset_fn))
    loss_fn = make_loss_fn(cfg.training, int(cfg.model.num_classes))
    step_fn = make_train_step(context, model, optimizer, loss_fn, global_batch, jit_compile)

    history: dict[str, list[tuple[int, float]]] = {}
    window = _Window()
    started = time.perf_counter()
    log.info("training steps %d..%d (global batch %d, %d replica(s), %d process(es))",
             first_step + 1, steps, volumes_per_step, context.num_replicas,
             context.world_size)
    last_saved = None
    for step in range(first_step + 1, steps + 1):
        images, labels = next(iterator)
        loss, dice_loss, ce_loss = step_fn(images, labels)
        step_variable.assign(step)
        window.add(float(loss), float(dice_loss), float(ce_loss))
        if not math.isfinite(window.last_loss):
            raise FloatingPointError(
                f"training: loss became {window.last_loss} at step {step}; lower "
                "training.learning_rate or use precision=fp32 (no checkpoint was written)"
            )
        if step % int(cfg.training.log_every) == 0 or step == steps:
            metrics = window.flush(volumes_per_step)
            metrics["learning_rate"] = current_learning_rate(optimizer)
            if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
                metrics["loss_scale"] = float(optimizer.dynamic_scale.numpy())
            for name, value in metrics.items():
                history.setdefault(name, []).append((step, value))
            tracker.log_metrics(metrics, step=step)
            if context.is_chief:
                elapsed = time.perf_counter() - started
                remaining = (steps - step) * metrics["step_time"]
                log.info(
                    "step %d/%d  loss %.4f (dice %.4f, ce %.4f)  lr %.2e  %.2f vol/s  "
                    "%.3f s/step  elapsed %s  ETA %s",
                    step, steps, metrics["loss"], metrics["dice_loss"], metrics["ce_loss"],
                    metrics["learning_rate"], metrics["volumes_per_second"],
                    metrics["step_time"], _clock(elapsed), _clock(remaining),
                )
        if step % int(cfg.training.checkpoint_every) == 0 or step == steps:
            last_saved = checkpointer.save() or last_saved
    # Every rank logs it: equal lines prove the replicas stayed in sync.
    log.info("weights checksum %s after step %d (rank %d of %d)", weights_checksum(model),
             steps, context.rank, context.world_size)
    speeds = [value for _, value in history.get("volumes_per_second", [])]
    return TrainResult(
        first_step=first_step,
        last_step=steps,
        checkpoint=last_saved if context.is_chief else None,
        history=history,
        volumes_per_second=float(np.median(speeds)) if speeds else float("nan"),
    )


def weights_checksum(model: keras.Model) -> str:
    """SHA-256 (16 hex digits) of the model's weights, bit-exact: equal on ranks in sync."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


class _Window:
    """Running sums of the losses and step times between two log lines."""

    def __init__(self) -> None:
        self.values: list[tuple[float, float, float]] = []
        self.tick = time.perf_counter()
        self.last_loss = 0.0

    def add(self, loss: float, dice_loss: float, ce_loss: float) -> None:
        self.values.append((loss, dice_loss, ce_loss))
        self.last_loss = loss

    def flush(self, volumes_per_step: int) -> dict[str, float]:
        now = time.perf_counter()
        count = max(len(self.values), 1)
        step_time = (now - self.tick) / count
        loss, dice_loss, ce_loss = np.mean(np.asarray(self.values), axis=0)
        self.values, self.tick = [], now
        return {
            "loss": float(loss),
            "dice_loss": float(dice_loss),
            "ce_loss": float(ce_loss),
            "step_time": step_time,
            "volumes_per_second": volumes_per_step / step_time,
        }


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
