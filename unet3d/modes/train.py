"""``mode=train``: fit on the training folds, checkpointing under the run folder.

The model and the optimizer are built inside the strategy scope (``unet3d.modes.build``), then
``unet3d.training.loop.train`` restores (on resume), trains and checkpoints. A resume commits
the run folder only once its checkpoint is restored (``job.begin`` as ``on_restored``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from unet3d.modes.build import (
    build_loss,
    build_model,
    build_optimizer,
    make_input_fn,
    training_steps,
)
from unet3d.modes.job import Job, data_convention, prepare

log = logging.getLogger(__name__)


def run(job: Job) -> dict[str, float]:
    """Train on the fold's training cases; returns ``train_steps``, ``final_loss``, speed."""
    _, metrics = train_model(job, prepare(job))
    return metrics


def train_model(job: Job, prepared: Any) -> tuple[Any, dict[str, float]]:
    """Build, (restore,) train and checkpoint the model on ``prepared.train_files``.

    Returns:
        The trained model and the metrics ``train_steps`` and, when steps ran,
        ``final_loss`` and ``train_volumes_per_second``.

    Raises:
        CheckpointError: a resume without a usable checkpoint (a folder whose earlier job
            stopped before its first checkpoint trains from step 0 instead).
        StorageError: a checkpoint cannot be written (disk full, read-only folder).
        FloatingPointError: the loss became NaN or infinite.
    """
    from unet3d.model.heads import model_head
    from unet3d.training.deep_supervision import apply_deep_supervision
    from unet3d.training.loop import train

    cfg, context = job.cfg, job.context
    model = build_model(cfg, job.runtime)
    loss_fn = build_loss(cfg, data_convention(prepared))
    # Deep supervision trains extra low-resolution outputs; `model` (one output) is what is
    # evaluated, checkpointed for inference and logged.
    with context.scope():
        training_model, loss_fn = apply_deep_supervision(model, loss_fn, cfg.training,
                                                         head=model_head(cfg.model))
    optimizer = build_optimizer(cfg, job.runtime)
    steps = training_steps(cfg, context.world_size)
    result = train(
        context, training_model, optimizer,
        loss_fn=loss_fn,
        input_fn=make_input_fn(cfg, prepared.train_files, context.local_size),
        steps=steps,
        batch_size=int(cfg.data.batch_size),
        output_dir=job.output_dir,
        tracker=job.tracker,
        log_every=int(cfg.training.log_every),
        checkpoint_every=int(cfg.training.checkpoint_every),
        keep_checkpoints=int(cfg.training.keep_checkpoints),
        resume=bool(cfg.resume),
        jit_compile=bool(job.runtime.precision.xla),
        on_restored=lambda first_step: _restored(job, steps, first_step),
    )
    metrics = {"train_steps": float(result.last_step)}
    if result.history.get("loss"):
        metrics["final_loss"] = result.history["loss"][-1][1]
        metrics["train_volumes_per_second"] = result.volumes_per_second
    if context.is_chief:
        _log_training_artifacts(job, model, result)
    return model, metrics


#: Tag of a resumed run's MLflow run: the step the resume started from (0: the earlier job had
#: stopped before its first checkpoint, so the run was trained over from the start).
RESUMED_FROM_TAG = "unet3d.resumed_from_step"


def _restored(job: Job, steps: int, first_step: int) -> None:
    """The state is ready: take the run folder, mark a resume's MLflow run with the step it
    starts from, then say how Horovod divided the steps."""
    job.begin()
    if bool(job.cfg.resume) and job.context.is_chief:
        job.tracker.set_tags({RESUMED_FROM_TAG: str(first_step)})
    max_steps = int(job.cfg.training.max_steps)
    if steps != max_steps and job.context.is_chief:
        log.info("training.max_steps=%d divided by %d Horovod processes: %d steps per process",
                 max_steps, job.context.world_size, steps)


def _log_training_artifacts(job: Job, model: Any, result: Any) -> None:
    """The training curves figure and, with ``tracking.log_model``, the Keras model."""
    from unet3d.tracking.figures import plot_training_curves

    if result.history:
        path = plot_training_curves(result.history,
                                    job.output_dir / "figures" / "training_curves.png")
        job.tracker.log_artifact(path, "figures")
    if job.cfg.tracking.log_model:
        # The smallest valid input: the signature leaves spatial sides open anyway.
        from unet3d.model.build import example_side

        side = example_side(job.cfg.model)
        example = np.zeros((1, side, side, side, int(job.cfg.model.in_channels)), np.float32)
        job.tracker.log_model(model, example)
