"""The two steps of the training and evaluation modes: ``train_model`` and ``evaluate_model``.

``mode=train`` runs the first, ``mode=evaluate`` the second on a checkpoint's models and
``mode=train_and_evaluate`` both, on the model it just trained; the modes themselves import no
other mode.

- ``train_model``: the model and the optimizer are built inside the strategy scope
  (``unet3d.modes.build``), then ``unet3d.training.loop.train`` restores (on resume), trains
  and checkpoints. A resume starts the job (``Job.start``: run folder, record, MLflow run) only
  once its checkpoint is restored.
- ``evaluate_model``: every held-out case is segmented exactly once, whole volume, by the
  sliding window of ``mode=predict`` (the shared per-case loop ``unet3d.inference.case_loop``), and
  scored with the metrics of the data set's regions: ``metrics/per_case.csv``, the best /
  median / worst case figures, the mean of every metric (logged as a table, to MLflow and to
  ``results.json``), and each case's predicted and reference labels in ``oof/<case>.npz`` (the
  out-of-fold predictions that ``mode=postprocess`` chooses a sweep's post-processing on).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from unet3d.config import model_head
from unet3d.modes.build import (
    build_loss,
    build_model,
    build_optimizer,
    make_input_fn,
    training_steps,
)
from unet3d.modes.job import Job, data_convention, lesionwise_scorer

log = logging.getLogger(__name__)

#: The per-case metrics of the held-out fold, under the run folder.
PER_CASE_CSV = "metrics/per_case.csv"


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
    job.start()
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


def evaluate_model(job: Job, models: Any, prepared: Any, labeler: Any = None,
                   head: str | None = None, input_divisor: int | None = None
                   ) -> dict[str, float]:
    """Segment and score every held-out case once (chief only; other ranks return {}).

    Args:
        job: the job (config, tracker, run folder).
        models: one Keras model or engine, or a list of them (an ensemble: mean softmax).
        prepared: the fold's data (``eval_files``, ``convention``).
        labeler: probabilities -> the data set's labels; None = the data set's own classes
            (a model just trained on it, with the head of ``model.head``).
        head: the models' head (with ``labeler``); None: ``model.head``.
        input_divisor: the models' input divisor (None: the ``model`` group's).

    Returns:
        The mean of every metric over the scored cases.

    Raises:
        DataError: a held-out record is missing or corrupt.
    """
    from unet3d.evaluation.evaluate import summarize_and_log, write_csv
    from unet3d.evaluation.postprocess import write_oof_prediction
    from unet3d.inference.case_loop import segment_cases
    from unet3d.inference.inputs import record_pending_cases
    from unet3d.inference.job_setup import job_predictor
    from unet3d.inference.labels import make_labeler as labeler_of
    from unet3d.tracking.figures import CaseFigureCollector

    if not job.context.is_chief:
        return {}
    convention = data_convention(prepared)
    key = "Dice_WT" if "WT" in convention.regions else f"Dice_{next(iter(convention.regions))}"
    figures = CaseFigureCollector(job.output_dir / "figures", key=key, convention=convention)
    head = head or model_head(job.cfg.model)
    if labeler is None:
        labeler = labeler_of(convention, convention, head=head,
                             threshold=float(job.cfg.inference.region_threshold))
    predictor = job_predictor(job.cfg, models, bool(job.runtime.precision.xla), head=head,
                              input_divisor=input_divisor)
    lesionwise = lesionwise_scorer(job.cfg, convention, job.tracker)

    def on_scored(case: Any, reference: Any, labels: Any, metrics: Any) -> None:
        # Out-of-fold predictions: mode=postprocess chooses the sweep's rules on them.
        write_oof_prediction(job.output_dir, case.case_id, labels, reference, case.spacing)
        figures.add(case, reference, labels, metrics)

    result = segment_cases(predictor, record_pending_cases(prepared.eval_files, convention),
                           verb="evaluated", labeler=labeler, convention=convention,
                           on_scored=on_scored, warn_unlabelled=True, lesionwise=lesionwise)
    rows = result.rows
    if len(rows) != result.total:
        log.warning("evaluated %d of %d held-out cases", len(rows), result.total)
    summary = summarize_and_log(rows, f"held-out evaluation over {len(rows)} case(s):",
                                convention)
    csv_path = write_csv(rows, job.output_dir / PER_CASE_CSV)
    job.tracker.log_metrics(summary, step=int(job.cfg.training.max_steps))
    job.tracker.log_artifact(csv_path, "metrics")
    for path in figures.write(rows):
        job.tracker.log_artifact(path, "figures")
    return dict(summary)
