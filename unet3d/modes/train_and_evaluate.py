"""``mode=train_and_evaluate`` (the default): ``mode=train``, then ``mode=evaluate``'s scoring
of the trained model on every held-out case of the fold (``unet3d.modes.steps``)."""

from __future__ import annotations

from unet3d.modes.job import Job, prepare
from unet3d.modes.steps import evaluate_model, train_model


def run(job: Job) -> dict[str, float]:
    """Train, then evaluate; returns the training metrics and the held-out summary."""
    prepared = prepare(job)
    model, metrics = train_model(job, prepared)
    metrics.update(evaluate_model(job, model, prepared))
    return metrics
