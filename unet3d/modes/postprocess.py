"""``mode=postprocess``: choose post-processing rules on a K-fold sweep's out-of-fold predictions.

``postprocess.checkpoint`` (default ``checkpoint``) names the sweep: its folder or
``runs:/<parent run id>``. Every fold job of the sweep must have written its held-out cases'
predictions during evaluation (``<job>/oof/<case>.npz``,
``unet3d.evaluation.postprocess.write_oof_prediction``). The rules that raise the mean Dice
over the regions and all out-of-fold cases (``select_postprocessing``) are written to
``<sweep dir>/postprocessing.json``, which ``mode=predict`` applies with that sweep's
ensemble; the before/after table is logged, on this job's MLflow run and on the sweep's
parent run when it has one. No TensorFlow is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from unet3d.errors import ConfigError, DataError
from unet3d.modes.job import Job

log = logging.getLogger(__name__)

#: The config key of the sweep to post-process.
SWEEP_KEY = "postprocess.checkpoint"


def resolve_sweep_dir(cfg: Any) -> Path:
    """The sweep folder of ``postprocess.checkpoint`` (a folder or ``runs:/<parent run id>``).

    Raises:
        ConfigError: unset, or not a folder.
        CheckpointError: a run reference that does not resolve.
    """
    spec = cfg.postprocess.get("checkpoint")
    if not spec:
        raise ConfigError(f"{SWEEP_KEY}: name the K-fold sweep (its folder or "
                          "runs:/<parent run id>), e.g. checkpoint=outputs/multirun/<date>/<time>")
    from unet3d.inference.checkpoints import job_reference_folder

    folder = job_reference_folder(cfg, str(spec), SWEEP_KEY)
    if not folder.is_dir():
        raise ConfigError(f"{SWEEP_KEY}: {folder} is not a folder")
    return folder


def sweep_oof_cases(sweep_dir: Path) -> tuple[list[Any], Any]:
    """Every fold job's out-of-fold cases, and the data set's label convention.

    Returns:
        ``(cases, convention)``: the convention recorded by the jobs (``run_identity.json``),
        BraTS 2019's when none is recorded.

    Raises:
        ConfigError: no fold job below ``sweep_dir``.
        DataError: a job without out-of-fold predictions, or jobs of different conventions.
    """
    from unet3d.evaluation.postprocess import OOF_FOLDER, read_oof_predictions
    from unet3d.inference.checkpoints import sweep_job_folders
    from unet3d.inference.models import recorded_convention
    from unet3d.runs.identity import read_identity

    jobs = sweep_job_folders(sweep_dir)
    if not jobs:
        raise ConfigError(f"{SWEEP_KEY}: {sweep_dir} holds no fold jobs (a --multirun "
                          "sweep folder is expected)")
    cases, conventions = [], set()
    for job_dir in jobs:
        identity = read_identity(job_dir)
        fold = identity.fold if identity is not None else None
        conventions.add(recorded_convention(job_dir))
        found = read_oof_predictions(job_dir, fold)
        if not found:
            raise DataError(f"{job_dir}: no out-of-fold predictions in {OOF_FOLDER}/ (the "
                            "sweep's evaluation writes them; re-run it with this version)")
        cases.extend(found)
    if len(conventions) != 1:
        raise DataError(f"{sweep_dir}: its jobs were trained on different label conventions "
                        f"{sorted(c.name for c in conventions)}")
    return cases, conventions.pop()


def run(job: Job) -> dict[str, float]:
    """Choose, save and log the sweep's post-processing; returns the before/after metrics."""
    from unet3d.evaluation.postprocess import save_postprocessing, select_postprocessing
    from unet3d.modes.job import lesionwise_scorer

    settings = job.cfg.postprocess
    sweep_dir = resolve_sweep_dir(job.cfg)
    cases, convention = sweep_oof_cases(sweep_dir)
    # On data ranked lesion-wise (evaluation.lesionwise), the rules are chosen on that metric.
    lesionwise = lesionwise_scorer(job.cfg, convention, job.tracker)
    selection = select_postprocessing(
        cases, convention, thresholds=[float(t) for t in settings.thresholds],
        unit=str(settings.unit), min_improvement=float(settings.min_improvement),
        lesionwise=lesionwise,
        component_thresholds=[float(t) for t in settings.get("component_thresholds") or ()])
    path = save_postprocessing(sweep_dir, selection, convention)
    table = selection.table()
    log.info("post-processing of %s over %d out-of-fold case(s) (%s):\n%s\nchosen: %s; "
             "written to %s", sweep_dir, selection.num_cases, selection.criterion, table,
             selection.rules.describe(), path)
    metrics = selection.metrics()
    job.tracker.set_tags({"postprocess.sweep_dir": str(sweep_dir),
                          "postprocess.rules": selection.rules.describe()})
    job.tracker.log_text(table, "postprocessing/table.md")
    job.tracker.log_artifact(path, "postprocessing")
    _log_on_parent_run(job, sweep_dir, metrics, table, path, selection.rules.describe())
    return metrics


def _log_on_parent_run(job: Job, sweep_dir: Path, metrics: dict[str, float], table: str,
                       path: Path, rules: str) -> None:
    """Log the table, the record and the metrics on the sweep's parent MLflow run, if any."""
    from unet3d.tracking.parent_run import read_parent_run_id

    parent = read_parent_run_id(sweep_dir)
    if parent is None or not getattr(job.tracker, "active", False):
        return
    try:
        client = job.tracker.client
        client.log_text(parent, table, "postprocessing/table.md")
        client.log_artifact(parent, str(path), "postprocessing")
        for name, value in metrics.items():
            client.log_metric(parent, name, value)
        client.set_tag(parent, "postprocess.rules", rules)
    except Exception as error:  # noqa: BLE001 - tracking must not lose the saved rules
        log.warning("could not log the post-processing on parent run %s: %s", parent, error)
