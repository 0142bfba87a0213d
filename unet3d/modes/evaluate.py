"""``mode=evaluate``: score trained model(s) on every held-out case of ``fold``.

``checkpoint`` is a checkpoint, a run dir, a sweep dir (its job of this fold is used) or an
MLflow run reference ``runs:/<run id>``; a list of them is evaluated as an ensemble. Every
held-out case is segmented exactly once, whole volume, by the sliding window of
``mode=predict`` and scored (``unet3d.modes.steps.evaluate_model``: ``metrics/per_case.csv``,
figures, the mean of every metric, the out-of-fold predictions ``oof/<case>.npz``).
"""

from __future__ import annotations

from unet3d.modes.job import Job, data_convention, prepare
from unet3d.modes.steps import evaluate_model


def run(job: Job) -> dict[str, float]:
    """Load ``checkpoint`` (one model or an ensemble) and evaluate it on the held-out fold."""
    from unet3d.inference.checkpoints import job_model_checkpoints
    from unet3d.inference.models import job_labeler, load_ensemble

    cfg = job.cfg
    prepared = prepare(job)
    prefixes = job_model_checkpoints(cfg, cfg.checkpoint, fold=int(cfg.fold), key="checkpoint")
    models = load_ensemble(cfg.model, prefixes, job.runtime)
    job.tracker.set_tags({"checkpoint": ", ".join(prefixes)})
    labeler, head = job_labeler(cfg, prefixes, data_convention(prepared))
    return evaluate_model(job, models, prepared, labeler=labeler, head=head)
