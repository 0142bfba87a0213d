"""The cross-validation summary of a sweep, logged on its parent MLflow run.

Used by :class:`unet3d.sweep_callback.CrossValidationCallback` at the end of a fold
sweep: `cv_mean/...`, `cv_std/...`, `cv_min/...`, `cv_max/...` metrics, the tables as
artifacts, the Markdown table as the run's note, the voxel- vs lesion-wise figure
(``cv_figure.py``) when the folds report lesion-wise metrics, and (with several
configuration groups) one nested summary run per group for parallel-coordinates plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unet3d.tracking import summary as summary_module
from unet3d.tracking.cv_figure import CV_FIGURE, has_lesionwise, plot_cv_scores
from unet3d.tracking.tracker import Tracker


def log_cv_summary(
    tracker: Tracker,
    summaries: list[summary_module.GroupSummary],
    paths: dict[str, Path],
    markdown: str,
    sweep_dir: Path,
    failed: list[tuple[str, dict[str, Any]]],
) -> None:
    """Log the summary of `summaries` on the parent run of `tracker` (see module doc).

    Raises:
        RuntimeError: some MLflow call failed (the tracker counted it).
    """
    several = len(summaries) > 1
    metrics: dict[str, float] = {}
    for group in summaries:
        metrics.update(summary_module.summary_metrics(group, group.group if several else None))
    tracker.log_metrics(metrics, step=0)
    for path in paths.values():
        tracker.log_artifact(path, "cv_summary")
    if not several and summaries and has_lesionwise(summaries[0]):
        figure = plot_cv_scores(summaries[0], sweep_dir / CV_FIGURE)
        tracker.log_artifact(figure, "cv_summary")
    multirun_yaml = sweep_dir / "multirun.yaml"
    if multirun_yaml.exists():
        tracker.log_artifact(multirun_yaml, "cv_summary")
    failed_text = ", ".join(
        f"{label}:fold{record.get('fold')}" if several else f"{record.get('fold')}"
        for label, record in failed
    )
    tracker.set_tags(
        {
            "cv.failed_folds": failed_text or "none",
            "cv.num_groups": str(len(summaries)),
            "cv.std": f"sample std, numpy ddof={summary_module.STD_DDOF}",
            "mlflow.note.content": markdown,
        }
    )
    if several:
        for group in summaries:
            _log_group_run(tracker, group)
    if tracker.tracking_errors:
        raise RuntimeError(
            f"{tracker.tracking_errors} MLflow call(s) failed while logging the summary"
        )


def _log_group_run(tracker: Tracker, group: summary_module.GroupSummary) -> None:
    """One nested summary run per configuration group (for parallel-coordinates plots)."""
    from mlflow.entities import Metric, Param, RunTag

    client = tracker.client
    name = f"cv-summary {group.label}"
    existing = client.search_runs(
        [tracker.experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{tracker.run_id}' "
            f"and tags.`unet3d.cv_group` = '{_quote(group.label)}'"
        ),
        max_results=1,
    )
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(
            tracker.experiment_id,
            run_name=name,
            tags={
                "mlflow.parentRunId": tracker.run_id,
                "unet3d.run_kind": "cv_group_summary",
                "unet3d.cv_group": group.label,
            },
        ).info.run_id
        params = [Param(key, value) for key, value in group.overrides.items()]
        if params:
            client.log_batch(run_id, params=params)
    values = summary_module.summary_metrics(group)
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, 0, 0) for key, value in values.items()],
        tags=[RunTag("cv.failed_folds", ",".join(str(r.get("fold")) for r in group.failed))],
    )
    client.set_terminated(run_id, status="FAILED" if group.failed else "FINISHED")


def _quote(text: str) -> str:
    return text.replace("'", "\\'")
