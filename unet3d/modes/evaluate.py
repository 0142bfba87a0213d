"""``mode=evaluate``: score trained model(s) on every held-out case of ``fold``.

``checkpoint`` is a checkpoint, a run dir, a sweep dir (its job of this fold is used) or an
MLflow run reference ``runs:/<run id>``; a list of them is evaluated as an ensemble. Every
held-out case is segmented exactly once, whole volume, by the sliding window of
``mode=predict`` (the shared per-case loop ``unet3d.inference.cases``), and scored with the
BraTS metrics: ``metrics/per_case.csv``, the best / median / worst case figures, the mean of
every metric (logged as a table, to MLflow and to ``results.json``).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from unet3d.modes.job import Job, prepare

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
    return evaluate_model(job, models, prepared)


def make_predictor(cfg: DictConfig, models: Any, jit_compile: bool) -> Any:
    """The ``EnsemblePredictor`` of ``models`` with the ``inference`` settings of ``cfg``."""
    from unet3d.inference.ensemble import EnsemblePredictor

    return EnsemblePredictor.from_config(models, cfg.inference, crop_size=cfg.data.crop_size,
                                         num_classes=int(cfg.model.num_classes),
                                         jit_compile=jit_compile)


def evaluate_model(job: Job, models: Any, prepared: Any) -> dict[str, float]:
    """Segment and score every held-out case once (chief only; other ranks return {}).

    Args:
        job: the job (config, tracker, run folder).
        models: one Keras model or a list of them (an ensemble: mean softmax).
        prepared: the fold's data (``eval_files``).

    Returns:
        The mean of every metric over the scored cases.

    Raises:
        DataError: a held-out record is missing or corrupt.
    """
    from unet3d.evaluation.evaluate import summarize_and_log, write_csv
    from unet3d.inference.cases import segment_cases
    from unet3d.inference.inputs import record_pending_cases
    from unet3d.tracking.case_figures import CaseFigureCollector

    if not job.context.is_chief:
        return {}
    figures = CaseFigureCollector(job.output_dir / "figures")
    predictor = make_predictor(job.cfg, models, bool(job.runtime.precision.xla))
    result = segment_cases(predictor, record_pending_cases(prepared.eval_files),
                           verb="evaluated", on_scored=figures.add, warn_unlabelled=True)
    rows = result.rows
    if len(rows) != result.total:
        log.warning("evaluated %d of %d held-out cases", len(rows), result.total)
    summary = summarize_and_log(rows, f"held-out evaluation over {len(rows)} case(s):")
    csv_path = write_csv(rows, job.output_dir / PER_CASE_CSV)
    job.tracker.log_metrics(summary, step=int(job.cfg.training.max_steps))
    job.tracker.log_artifact(csv_path, "metrics")
    for path in figures.write(rows):
        job.tracker.log_artifact(path, "figures")
    return dict(summary)
