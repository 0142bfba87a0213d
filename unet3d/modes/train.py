"""``mode=train``: fit on the training folds, checkpointing under the run folder
(``unet3d.modes.steps.train_model``; ``resume=true`` continues a run from its checkpoint)."""

from __future__ import annotations

from unet3d.modes.job import Job, prepare
from unet3d.modes.steps import train_model


def run(job: Job) -> dict[str, float]:
    """Train on the fold's training cases; returns ``train_steps``, ``final_loss``, speed."""
    _, metrics = train_model(job, prepare(job))
    return metrics
