"""``mode=evaluate``: score trained model(s) on every held-out case of ``fold``.

``checkpoint`` is a checkpoint, a run dir, a sweep dir (its job of this fold is used) or an
MLflow run reference ``runs:/<run id>``; a list of them is evaluated as an ensemble. Every
held-out case is segmented exactly once, whole volume, by the sliding window of
``mode=predict`` (the shared per-case loop ``unet3d.inference.cases``), and scored with the
metrics of the data set's regions: ``metrics/per_case.csv``, the best / median / worst case
figures, the mean of every metric (logged as a table, to MLflow and to ``results.json``), and
each case's predicted and reference labels in ``oof/<case>.npz`` (the out-of-fold predictions
that ``mode=postprocess`` chooses a sweep's post-processing on).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from unet3d.config import model_head
from unet3d.modes.job import Job, data_convention, prepare

log = logging.getLogger(__name__)

#: The per-case metrics of the held-out fold, under the run folder.
PER_CASE_CSV = "metrics/per_case.csv"


def run(job: Job) -> dict[str, float]:
    """Load ``checkpoint`` (one model or an ensemble) and evaluate it on the held-out fold."""
    from unet3d.inference.checkpoints import job_model_checkpoints
    from unet3d.inference.models import load_ensemble

    cfg = job.cfg
    prepared = prepare(job)
    prefixes = job_model_checkpoints(cfg, cfg.checkpoint, fold=int(cfg.fold), key="checkpoint")
    models = load_ensemble(cfg.model, prefixes, job.runtime)
    job.tracker.set_tags({"checkpoint": ", ".join(prefixes)})
    labeler, head = make_labeler(cfg, prefixes, data_convention(prepared))
    return evaluate_model(job, models, prepared, labeler=labeler, head=head)


def make_predictor(cfg: DictConfig, models: Any, jit_compile: bool,
                   head: str | None = None) -> Any:
    """The ``EnsemblePredictor`` of ``models`` with the ``inference`` settings of ``cfg``.

    The number of output channels is the members' (their recorded network), not the job's
    ``model.num_classes``: a model of another convention is translated afterwards.

    Args:
        cfg: the job config (``inference``, ``data.crop_size``).
        models: one Keras model or a list of them.
        jit_compile: ``precision.xla``.
        head: the members' head (``trained_labels``); None: the job's ``model.head``.
    """
    from unet3d.inference.ensemble import EnsemblePredictor

    members = models if isinstance(models, list | tuple) else [models]
    channels = {int(member.output_shape[-1]) for member in members}
    if len(channels) != 1:
        from unet3d.errors import CheckpointError

        raise CheckpointError(f"the ensemble's members give {sorted(channels)} output "
                              "channels; they must all give the same")
    # A region (sigmoid) head has no background channel: outside the brain box every region
    # probability is 0.
    head = head or model_head(cfg.model)
    background = None if head == "regions" else 0
    return EnsemblePredictor.from_config(models, cfg.inference, crop_size=cfg.data.crop_size,
                                         num_classes=channels.pop(), jit_compile=jit_compile,
                                         background_class=background)


def make_labeler(cfg: DictConfig, prefixes: Any, convention: Any) -> tuple[Any, str]:
    """The labeler of the checkpoints' outputs into the labels of ``convention``.

    Returns:
        ``(labeler, head)``: the labeler and the head the members were trained with (the
        predictor's background depends on it: ``make_predictor``).

    Args:
        cfg: the job config (``inference.region_threshold``).
        prefixes: the checkpoints (their runs record the convention and head they learnt).
        convention: the ``LabelConvention`` of the data set being segmented.

    Raises:
        CheckpointError: members trained on other conventions or heads.
        ConfigError: the model's classes cannot be written in ``convention``.
    """
    from unet3d.inference.labels import make_labeler as labeler_of
    from unet3d.inference.models import trained_labels

    trained, head = trained_labels(prefixes)
    threshold = float(cfg.inference.region_threshold)
    return labeler_of(trained, convention, head=head, threshold=threshold), head


def evaluate_model(job: Job, models: Any, prepared: Any, labeler: Any = None,
                   head: str | None = None) -> dict[str, float]:
    """Segment and score every held-out case once (chief only; other ranks return {}).

    Args:
        job: the job (config, tracker, run folder).
        models: one Keras model or a list of them (an ensemble: mean softmax).
        prepared: the fold's data (``eval_files``, ``convention``).
        labeler: probabilities -> the data set's labels; None = the data set's own classes
            (a model just trained on it, with the head of ``model.head``).
        head: the models' head (with ``labeler``); None: ``model.head``.

    Returns:
        The mean of every metric over the scored cases.

    Raises:
        DataError: a held-out record is missing or corrupt.
    """
    from unet3d.evaluation.evaluate import summarize_and_log, write_csv
    from unet3d.evaluation.postprocess import write_oof_prediction
    from unet3d.inference.cases import segment_cases
    from unet3d.inference.inputs import record_pending_cases
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
    predictor = make_predictor(job.cfg, models, bool(job.runtime.precision.xla), head=head)

    def on_scored(case: Any, reference: Any, labels: Any, metrics: Any) -> None:
        # Out-of-fold predictions: mode=postprocess chooses the sweep's rules on them.
        write_oof_prediction(job.output_dir, case.case_id, labels, reference, case.spacing)
        figures.add(case, reference, labels, metrics)

    result = segment_cases(predictor, record_pending_cases(prepared.eval_files, convention),
                           verb="evaluated", labeler=labeler, convention=convention,
                           on_scored=on_scored, warn_unlabelled=True)
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
