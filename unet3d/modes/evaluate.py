"""``mode=evaluate``: score trained model(s) on every held-out case of ``fold``.

``checkpoint`` is a checkpoint, a run dir, a sweep dir (its job of this fold is used), an
MLflow run reference ``runs:/<run id>`` or an export folder of ``mode=export``; a list of them
is evaluated as an ensemble, in the engine ``inference.engine``. Every held-out case is
segmented exactly once, whole volume, by the sliding window of ``mode=predict`` and scored
(``unet3d.modes.steps.evaluate_model``: ``metrics/per_case.csv``, figures, the mean of every
metric, the out-of-fold predictions ``oof/<case>.npz``).
"""

from __future__ import annotations

from unet3d.modes.job import Job, data_convention, prepare
from unet3d.modes.steps import evaluate_model


def run(job: Job) -> dict[str, float]:
    """Load ``checkpoint`` (one model, an ensemble or an export folder) and evaluate it on the
    held-out fold, in the engine ``inference.engine``."""
    from unet3d.inference.job_setup import model_source, source_labeler, source_members

    cfg = job.cfg
    prepared = prepare(job)
    source = model_source(cfg, cfg.checkpoint, fold=int(cfg.fold), key="checkpoint")
    labeler, head = source_labeler(cfg, source, data_convention(prepared))
    members = source_members(cfg, source, job.runtime, job.tracker)
    job.tracker.set_tags({"checkpoint": ", ".join(source.ids)})
    return evaluate_model(job, members, prepared, labeler=labeler, head=head,
                          input_divisor=source.input_divisor())
