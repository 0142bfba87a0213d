"""The one custom training loop, shared by every strategy (tf.distribute and Horovod).

Reading order, top to bottom:
1. the model and optimizer exist (built by ``mode=train`` inside ``context.scope()``);
2. the optimizer's variables are built and the newest checkpoint is restored when resuming
   (under Horovod by rank 0 only);
3. Horovod broadcasts rank 0's variables and step (after the build and after a restore); the
   caller's ``on_restored`` then commits the run folder (a resume writes nothing before);
4. the input pipeline starts at the first step (``input_fn(first_step)``, so a resumed run is
   seeded anew and sees new crops);
5. each step: forward, loss / global batch, gradients (all-reduced by the strategy or by
   Horovod's tape), optimizer update; every ``log_every`` steps a progress line and metrics;
   every ``checkpoint_every`` steps and at the end a checkpoint; finally every rank logs a
   checksum of its weights (equal on all ranks when gradients were averaged).

Nothing here reads the config: ``unet3d.modes.build`` and ``unet3d.modes.train`` assemble
the arguments. With deep supervision (``unet3d.training.deep_supervision``) the model given
here is the training model with several outputs and the loss their weighted sum; its
checkpoints still load into the single-output network.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from unet3d.errors import CheckpointError
from unet3d.runs.folder import earlier_job_without_work
from unet3d.training.checkpoint import CHECKPOINT_FOLDER, Checkpointer, build_optimizer_variables
from unet3d.training.optimizer import current_learning_rate

log = logging.getLogger(__name__)

#: ``loss_fn(labels int32 [B, h, w, d], probabilities float32 [B, h, w, d, K])`` ->
#: ``(per-sample loss [B], {part name: per-sample term [B]})`` (``unet3d.training.losses``;
#: the built-in loss's parts are ``dice_loss`` and ``ce_loss``).
LossFn = Callable[[Any, Any], tuple[Any, dict[str, Any]]]
#: Metric names of the loop itself, which no loss part may take.
LOOP_METRICS = frozenset({"loss", "learning_rate", "loss_scale", "step_time",
                          "volumes_per_second"})
#: ``dataset_fn(input_context) -> tf.data.Dataset`` of ``(image float32 [b, h, w, d, C],
#: label int32 [b, h, w, d])`` per-replica batches (``DistributedContext.distribute_dataset``).
DatasetFn = Callable[[Any], tf.data.Dataset]


class MetricsLogger(Protocol):
    """What the loop logs its progress metrics to (``unet3d.tracking``'s Tracker)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record ``metrics`` (name -> value) at ``step``."""


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) training run reports.

    Attributes:
        first_step: the step the run started from (0, or the restored checkpoint's step).
        last_step: the step it stopped at.
        checkpoint: prefix of the last checkpoint written (chief only), else None.
        history: metric name -> [(step, value)] at every log line.
        volumes_per_second: median global throughput over the log windows (NaN when none).
    """

    first_step: int
    last_step: int
    checkpoint: str | None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    volumes_per_second: float = float("nan")


def total_steps(max_steps: int, world_size: int, divide_by_world_size: bool) -> int:
    """The step a process trains to.

    Args:
        max_steps: ``training.max_steps``.
        world_size: number of processes.
        divide_by_world_size: True under Horovod (``strategy.divide_steps_by_world_size``):
            each process then trains ``max_steps // world_size`` steps (at least 1).
    """
    steps = int(max_steps)
    if divide_by_world_size:
        steps = max(1, steps // max(int(world_size), 1))
    return steps


def make_train_step(context: Any, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    loss_fn: LossFn, global_batch: int, jit_compile: bool = False) -> Callable:
    """A compiled distributed train step: forward, loss / global batch, gradients, update.

    Args:
        context: the distribution context (``run``, ``gradients``, ``reduce_sum``).
        model: a Keras model mapping ``[b, h, w, d, C]`` float32 to probabilities
            ``[b, h, w, d, K]`` (softmax classes or sigmoid regions), or to a list of them
            (deep supervision), which is passed to ``loss_fn`` as it is.
        optimizer: a built Keras optimizer, possibly a ``LossScaleOptimizer``.
        loss_fn: per-sample loss and its parts (see ``LossFn``).
        global_batch: volumes per step over all replicas: the per-sample losses are summed
            and divided by it, so the all-reduced gradients are those of the global mean.
        jit_compile: compile the step with XLA.

    Returns:
        ``step(images, labels) -> (loss, parts)``: the loss, a float32 scalar, and
        ``{part name: float32 scalar}`` of the loss's parts, each the global mean over the
        step's batch (equal on every replica and process).

    Raises:
        ValueError: (when first traced) a loss part is named like a metric of the loop.
    """
    scales_loss = hasattr(optimizer, "scale_loss") and isinstance(
        optimizer, keras.mixed_precision.LossScaleOptimizer
    )

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tuple[Any, dict[str, Any]]:
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_sample, parts = loss_fn(labels, probabilities)
            loss = tf.reduce_sum(per_sample) / global_batch
            scaled = optimizer.scale_loss(loss) if scales_loss else loss
        clashing = sorted(LOOP_METRICS & set(parts))
        if clashing:
            raise ValueError(f"loss: part(s) {clashing} are named like metrics of the "
                             "training loop; rename them")
        variables = model.trainable_variables
        gradients = context.gradients(tape, scaled, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss, {name: tf.reduce_sum(value) / global_batch
                      for name, value in parts.items()}

    def step(images: tf.Tensor, labels: tf.Tensor) -> tuple[Any, dict[str, Any]]:
        loss, parts = context.run(replica_step, (images, labels))
        return context.reduce_sum(loss), {name: context.reduce_sum(value)
                                          for name, value in parts.items()}

    return tf.function(step, jit_compile=jit_compile, reduce_retracing=True)


def train(
    context: Any,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    *,
    loss_fn: LossFn,
    input_fn: Callable[[int], DatasetFn],
    steps: int,
    batch_size: int,
    output_dir: Path,
    tracker: MetricsLogger,
    log_every: int,
    checkpoint_every: int,
    keep_checkpoints: int = 3,
    resume: bool = False,
    jit_compile: bool = False,
    on_restored: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` to step ``steps``; see the module doc for the order of events.

    Args:
        context: the distribution context the model and optimizer were built in.
        model: the Keras model (built inside ``context.scope()``); the deep-supervision
            training model when ``training.deep_supervision`` is on (its checkpoints load into
            the network it wraps).
        optimizer: its optimizer (built inside ``context.scope()``; variables built here).
        loss_fn: per-sample loss (``unet3d.training.losses.build_loss``).
        input_fn: ``input_fn(first_step)`` gives the ``dataset_fn`` of the training input
            starting after ``first_step`` (seed it with the step so a resume sees new crops).
        steps: the step to stop at (already divided by the processes under Horovod).
        batch_size: volumes per replica and step.
        output_dir: the run folder; checkpoints go to ``<output_dir>/checkpoints``.
        tracker: receives the progress metrics every ``log_every`` steps.
        log_every: steps between progress lines and metrics (and at the last step).
        checkpoint_every: steps between checkpoints (and at the last step).
        keep_checkpoints: newest checkpoints kept.
        resume: restore the newest complete checkpoint in ``<output_dir>/checkpoints`` first
            (``unet3d.training.checkpoint.latest_checkpoint``); a folder whose earlier job
            stopped before its first checkpoint starts at step 0, with a warning.
        jit_compile: compile the train step with XLA.
        on_restored: called with the first step once the state is ready (after the
            restore and broadcast of a resume, before the first step): the runner commits the
            run folder and opens the MLflow run there, so that a resume whose checkpoint does
            not restore changes nothing. Then what killed saves left in the checkpoints folder
            is cleared (``Checkpointer.tidy``).

    Returns:
        The steps trained, the last checkpoint and the metric history.

    Raises:
        CheckpointError: ``resume`` into a folder without an earlier job, or a checkpoint
            that does not restore.
        StorageError: a checkpoint cannot be written (disk full, read-only folder).
        FloatingPointError: the loss became NaN or infinite (no checkpoint is written).
    """
    with context.scope():
        step_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        build_optimizer_variables(model, optimizer)
    checkpointer = Checkpointer(
        Path(output_dir) / CHECKPOINT_FOLDER, model, optimizer, step_variable,
        keep=int(keep_checkpoints), is_chief=context.is_chief,
        must_participate=context.name == "multi_worker", worker_index=context.rank,
    )
    # Under Horovod rank 0 restores and broadcasts everything, the step included (the other
    # ranks need not see its files); tf.distribute workers each restore the same checkpoint.
    if resume and (context.is_chief or not context.uses_horovod):
        latest = checkpointer.latest()
        if latest:
            checkpointer.restore(latest)
        elif earlier_job_without_work(output_dir):
            # The earlier job stopped before its first checkpoint: nothing to continue from,
            # nothing to protect; the resume starts the run over (and says so).
            log.warning("resume: no checkpoint in %s (the earlier job there stopped before its "
                        "first one): training starts at step 0", checkpointer.directory)
        else:
            raise CheckpointError(
                f"resume: no checkpoint in {checkpointer.directory}; resume a run in its own "
                "folder (one job: hydra.run.dir=<its folder>; a sweep: its own command with "
                "hydra.sweep.dir=<the sweep folder>), or drop resume=true to start a new run"
            )
    context.broadcast_variables([step_variable, *model.variables, *optimizer.variables])
    first_step = int(step_variable.numpy())
    if on_restored is not None:
        on_restored(first_step)
    checkpointer.tidy()  # the job holds the folder now: clear what killed saves left there
    if first_step >= steps:
        log.info("checkpoint is at step %d >= %d steps: nothing to train", first_step, steps)
        return TrainResult(first_step, first_step, checkpointer.latest())

    volumes_per_step = context.global_batch_size(int(batch_size))
    iterator = iter(context.distribute_dataset(input_fn(first_step)))
    step_fn = make_train_step(context, model, optimizer, loss_fn, volumes_per_step, jit_compile)

    history: dict[str, list[tuple[int, float]]] = {}
    window = LogWindow()
    started = time.perf_counter()
    log.info("training steps %d..%d (global batch %d, %d replica(s), %d process(es))",
             first_step + 1, steps, volumes_per_step, context.num_replicas,
             context.world_size)
    last_saved = None
    for step in range(first_step + 1, steps + 1):
        images, labels = next(iterator)
        loss, parts = step_fn(images, labels)
        step_variable.assign(step)
        window.add(float(loss), {name: float(value) for name, value in parts.items()})
        if not math.isfinite(window.last_loss):
            raise FloatingPointError(
                f"training: loss became {window.last_loss} at step {step}; lower "
                "training.learning_rate or use precision=fp32 (no checkpoint was written)"
            )
        if step % int(log_every) == 0 or step == steps:
            metrics = window.flush(volumes_per_step)
            metrics["learning_rate"] = current_learning_rate(optimizer)
            if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
                metrics["loss_scale"] = float(optimizer.dynamic_scale.numpy())
            for name, value in metrics.items():
                history.setdefault(name, []).append((step, value))
            tracker.log_metrics(metrics, step=step)
            if context.is_chief:
                log.info("%s", progress_line(step, steps, metrics,
                                             time.perf_counter() - started))
        if step % int(checkpoint_every) == 0 or step == steps:
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


def progress_line(step: int, steps: int, metrics: dict[str, float], elapsed: float) -> str:
    """The progress line of a log window; the ETA assumes the window's mean step time.

    The loss's parts follow the loss in parentheses, a ``_loss`` suffix dropped
    (``loss 0.9 (dice 0.4, ce 0.5)``).

    Args:
        step: the step just done; steps: the step training stops at.
        metrics: the window's ``loss``, ``learning_rate``, ``volumes_per_second``,
            ``step_time`` (seconds), optionally ``loss_scale``, and the loss's parts (every
            other name).
        elapsed: seconds since training started.
    """
    remaining = (steps - step) * metrics["step_time"]
    parts = ", ".join(f"{name.removesuffix('_loss')} {value:.4f}"
                      for name, value in metrics.items() if name not in LOOP_METRICS)
    return (
        f"step {step}/{steps}  loss {metrics['loss']:.4f}{f' ({parts})' if parts else ''}  "
        f"lr {metrics['learning_rate']:.2e}  {metrics['volumes_per_second']:.2f} vol/s  "
        f"{metrics['step_time']:.3f} s/step  elapsed {clock(elapsed)}  ETA {clock(remaining)}"
    )


def weights_checksum(model: keras.Model) -> str:
    """SHA-256 (16 hex digits) of the model's weights, bit-exact: equal on ranks in sync."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


class LogWindow:
    """Running losses and step time between two log lines.

    ``add`` each step's loss and loss parts; ``flush`` returns their means (``loss``, then
    each part by name), the mean step time (s) since the previous flush (or creation) and the
    global volumes/s, and starts a new window.
    """

    def __init__(self, clock_fn: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock_fn
        self.values: list[dict[str, float]] = []
        self.tick = clock_fn()
        self.last_loss = 0.0

    def add(self, loss: float, parts: dict[str, float] | None = None) -> None:
        """Record one step's loss and its parts ({name: value})."""
        self.values.append({"loss": loss, **(parts or {})})
        self.last_loss = loss

    def flush(self, volumes_per_step: int) -> dict[str, float]:
        """Means of the window and its speed; ``volumes_per_step`` is the global batch."""
        now = self._clock()
        count = max(len(self.values), 1)
        step_time = (now - self.tick) / count
        names = list(self.values[0]) if self.values else ["loss"]
        means = {name: float(np.mean([values[name] for values in self.values]))
                 if self.values else float("nan") for name in names}
        self.values, self.tick = [], now
        return {**means, "step_time": step_time, "volumes_per_second": volumes_per_step / step_time}


def clock(seconds: float) -> str:
    """``H:MM:SS`` of a duration in seconds (negative durations show as 0:00:00)."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
