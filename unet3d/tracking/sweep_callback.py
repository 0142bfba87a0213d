"""Hydra callback turning a `--multirun` sweep into one MLflow cross-validation experiment.

Registered in `conf/hydra/default.yaml`::

    callbacks:
      cv_summary:
        _target_: unet3d.tracking.sweep_callback.CrossValidationCallback

- `on_multirun_start` (sweep process): creates the parent MLflow run `cv-<sweep dir>` (or
  reopens it when the sweep dir already has one) and writes its id to
  `<sweep dir>/mlflow_parent_run_id`. Jobs nest their runs under it:
  `unet3d.tracking.parent_run.current_parent_run_id()` reads that file, so it works with the
  basic launcher (same process) and with the joblib or submitit launchers (other processes or
  hosts sharing the file system).
- `on_job_end` (job process): when a job raised, logs the error at ERROR level, makes sure
  `results.json` says FAILED, and marks the Hydra job as completed so that Hydra's sweeper does
  not abort before `on_multirun_end` (Hydra 1.3's `BasicSweeper` re-raises the first failed
  job's exception after the batch, which would skip the summary).
- `on_multirun_end` (sweep process): collects every job's `results.json`, writes
  `cv_summary.md`, `cv_folds.csv`, `cv_summary.csv` to the sweep dir, logs the Markdown table,
  logs `cv_mean/…`, `cv_std/…`, `cv_min/…`, `cv_max/…` metrics and the tables on the parent run
  and ends it FINISHED (all folds finished) or FAILED. When a fold failed or the summary itself
  failed, it raises `SystemExit(exit_code)`: Hydra only turns `Exception`s from callbacks into
  warnings, `SystemExit` propagates and the `python -m unet3d.run --multirun` process exits
  with that status.

If the sweep process dies before `on_multirun_end` (Ctrl-C, SIGTERM, a launcher error), an
`atexit` hook ends the parent run KILLED (KeyboardInterrupt/SIGTERM) or FAILED, so it is never
left RUNNING; a SIGKILL of the sweep process leaves it RUNNING (rerunning the sweep in the same
`hydra.sweep.dir` reopens it).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from unet3d.runs import results as results_module
from unet3d.runs.folder import HYDRA_SUBDIR, UNCOMMITTED_FAILURES, refuse_used_sweep_dir
from unet3d.runs.naming import parse_override
from unet3d.runs.provenance import git_tags
from unet3d.runtime.signals import install_termination_handlers
from unet3d.tracking import summary as summary_module
from unet3d.tracking.parent_run import PARENT_RUN_ID_FILE
from unet3d.tracking.tracker import Tracker, read_run_id_file
from unet3d.tracking.values import flatten_config

logger = logging.getLogger(__name__)

class CrossValidationCallback(Callback):
    """Parent MLflow run and cross-validation summary of a Hydra multirun (see module doc).

    Args:
        continue_on_failure: keep the sweep going when a job raises (the job is recorded as
            FAILED and the sweep exits non-zero at the end). False restores Hydra's behaviour
            (the sweeper re-raises the job's exception; no summary).
        exit_code: exit status of a sweep with a failed fold or a failed summary.
        group_keys_exclude: override keys that do not define a configuration group.
    """

    def __init__(
        self,
        continue_on_failure: bool = True,
        exit_code: int = 1,
        group_keys_exclude: Sequence[str] = ("fold",),
    ) -> None:
        self.continue_on_failure = bool(continue_on_failure)
        self.exit_code = int(exit_code)
        self.group_keys_exclude = tuple(str(key) for key in group_keys_exclude)
        self.tracker: Tracker | None = None
        self._finalized = False
        self._uncaught: type[BaseException] | None = None
        self._restore_sigterm: Any = None

    # ------------------------------------------------------------------ hooks

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create (or reopen) the parent run and write its id to the sweep dir."""
        from unet3d.errors import RunFolderError

        try:
            sweep_dir = _sweep_dir(config)
            refuse_used_sweep_dir(config, sweep_dir)
        except RunFolderError as error:
            logger.error("%s", error)
            self._finalized = True
            raise SystemExit(self.exit_code) from None
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            self.tracker = self._parent_tracker(config, sweep_dir)
            if self.tracker.active:
                self._register_exit_guard()
        except Exception as error:  # noqa: BLE001 - Hydra would only warn: fail loudly
            logger.exception("Could not create the sweep's parent MLflow run: %s", error)
            raise SystemExit(self.exit_code) from error

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Record a failed job and let the sweep go on (see `continue_on_failure`)."""
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if not self.continue_on_failure or job_return.status != JobStatus.FAILED:
            return
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        error = job_return._return_value
        overrides = list(job_return.overrides or [])
        description = f"{type(error).__name__}: {error}"
        exc_info = (
            (type(error), error, error.__traceback__) if isinstance(error, BaseException) else None
        )
        logger.error("Job with overrides %s FAILED: %s", overrides, description, exc_info=exc_info)
        try:
            output_dir = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir")))
            previous = results_module.read_job_result(output_dir) or {}
            if previous.get("status") in (None, "FINISHED"):
                fold = OmegaConf.select(config, "fold", default=None)
                extra = {
                    key: value
                    for key, value in previous.items()
                    if key
                    not in ("status", "fold", "overrides", "metrics", "error", "mlflow_run_id")
                }
                results_module.write_job_result(
                    output_dir,
                    status="FAILED",
                    fold=previous.get("fold", fold),
                    overrides=previous.get("overrides", overrides),
                    metrics=previous.get("metrics", {}),
                    error=previous.get("error") or description,
                    mlflow_run_id=previous.get("mlflow_run_id")
                    or read_run_id_file(output_dir / "mlflow_run_id"),
                    **extra,
                )
        except Exception:  # noqa: BLE001 - the summary treats a missing file as FAILED anyway
            logger.exception("Could not write results.json of the failed job %s", overrides)
        job_return.status = JobStatus.COMPLETED
        job_return.return_value = {"status": "FAILED", "error": description}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarise the folds, log the summary on the parent run, exit non-zero on failure."""
        failed_reason = None
        tracker = self.tracker
        try:
            sweep_dir = _sweep_dir(config)
            if tracker is None:
                tracker = self.tracker = self._parent_tracker(config, sweep_dir, log_params=False)
            results = results_module.collect_job_results(sweep_dir, HYDRA_SUBDIR)
            summaries = summary_module.cross_validation_summary(results, self.group_keys_exclude)
            paths = summary_module.write_summary_tables(summaries, sweep_dir)
            markdown = paths[summary_module.SUMMARY_MARKDOWN].read_text(encoding="utf-8")
            failed = [(summary.label, record) for summary in summaries for record in summary.failed]
            if not results:
                failed_reason = f"no job results found in {sweep_dir}"
            elif failed:
                failed_reason = "failed folds: " + "; ".join(
                    f"{label} fold {record.get('fold')}: {record.get('status')}"
                    for label, record in failed
                )
            if UNCOMMITTED_FAILURES:
                refused = "; ".join(f"{Path(folder).name}: {error}"
                                    for folder, error in UNCOMMITTED_FAILURES)
                failed_reason = f"{failed_reason}; " if failed_reason else ""
                failed_reason += f"job(s) refused, their folders left unchanged: {refused}"
                UNCOMMITTED_FAILURES.clear()
            level = logging.ERROR if failed_reason else logging.INFO
            logger.log(level, "Cross-validation summary (%s):\n%s", sweep_dir, markdown)
            if tracker is not None and tracker.running:
                self._log_summary(tracker, summaries, paths, markdown, sweep_dir, failed)
                tracker.end("FAILED" if failed_reason else "FINISHED", failed_reason)
        except Exception as error:  # noqa: BLE001 - Hydra would only warn: fail loudly
            logger.exception("The cross-validation summary FAILED: %s", error)
            failed_reason = f"cross-validation summary failed: {type(error).__name__}: {error}"
            if tracker is not None:
                try:
                    tracker.end("FAILED", error)
                except Exception:  # noqa: BLE001
                    logger.exception("Could not mark the parent run FAILED")
        finally:
            self._finalized = True
            if self._restore_sigterm is not None:
                self._restore_sigterm()
                self._restore_sigterm = None
        if failed_reason:
            logger.error("Sweep FAILED (%s); exiting with status %d", failed_reason, self.exit_code)
            raise SystemExit(self.exit_code)

    # ------------------------------------------------------------------ internals

    def _parent_tracker(
        self, config: DictConfig, sweep_dir: Path, log_params: bool = True
    ) -> Tracker:
        with _hydra_config_set(config):
            tracking_cfg = _resolved(config, "tracking") or {}
            root_dir = _resolved(config, "paths.root_dir") or os.getcwd()
            task_overrides = [str(item) for item in config.hydra.overrides.task]
            swept = [parse_override(item)[0] for item in task_overrides]
            params = flatten_config(config, exclude=("hydra", *swept)) if log_params else None
        tracker = Tracker(tracking_cfg, root_dir)
        if not tracker.active:
            logger.info("Tracking disabled: the sweep summary is written to %s only", sweep_dir)
            return tracker
        launcher = OmegaConf.select(config, "hydra.launcher._target_", default="") or ""
        tags = {
            "unet3d.run_kind": "cv_parent",
            "unet3d.sweep_dir": str(sweep_dir),
            "unet3d.overrides": " ".join(task_overrides),
            "unet3d.launcher": str(launcher).rsplit(".", 1)[-1],
            **git_tags(root_dir),
        }
        tracker.start(
            None,
            sweep_dir,
            run_name=_parent_run_name(sweep_dir),
            tags=tags,
            run_id_file=PARENT_RUN_ID_FILE,
        )
        if params:
            tracker.log_params(params)
        logger.info(
            "MLflow parent run %s for sweep %s (%s)",
            tracker.run_id,
            sweep_dir,
            tracker.tracking_uri,
        )
        return tracker

    def _log_summary(
        self,
        tracker: Tracker,
        summaries: list[summary_module.GroupSummary],
        paths: dict[str, Path],
        markdown: str,
        sweep_dir: Path,
        failed: list[tuple[str, dict[str, Any]]],
    ) -> None:
        several = len(summaries) > 1
        metrics: dict[str, float] = {}
        for group in summaries:
            metrics.update(summary_module.summary_metrics(group, group.group if several else None))
        tracker.log_metrics(metrics, step=0)
        for path in paths.values():
            tracker.log_artifact(path, "cv_summary")
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
                self._log_group_run(tracker, group)
        if tracker.tracking_errors:
            raise RuntimeError(
                f"{tracker.tracking_errors} MLflow call(s) failed while logging the summary"
            )

    def _log_group_run(self, tracker: Tracker, group: summary_module.GroupSummary) -> None:
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

    def _register_exit_guard(self) -> None:
        previous_hook = sys.excepthook

        def excepthook(exception_type: type[BaseException], *args: Any) -> None:
            self._uncaught = exception_type
            previous_hook(exception_type, *args)

        sys.excepthook = excepthook
        self._restore_sigterm = install_termination_handlers()
        atexit.register(self._end_abandoned_parent)

    def _end_abandoned_parent(self) -> None:
        tracker = self.tracker
        if self._finalized or tracker is None or not tracker.running:
            return
        interrupted = self._uncaught is not None and issubclass(self._uncaught, KeyboardInterrupt)
        status = "KILLED" if interrupted else "FAILED"
        reason = (
            "the sweep was interrupted before its end"
            if interrupted
            else "the sweep stopped before its end (a job raised or the launcher failed)"
        )
        try:
            tracker.end(status, reason)
            logger.error("Parent run %s ended %s: %s", tracker.run_id, status, reason)
        except Exception:  # noqa: BLE001 - exiting anyway
            logger.exception("Could not end the parent run %s", tracker.run_id)


# ---------------------------------------------------------------------- helpers


def _sweep_dir(config: DictConfig) -> Path:
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not sweep_dir.is_absolute():
        cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None) or os.getcwd()
        sweep_dir = Path(str(cwd)) / sweep_dir
    return sweep_dir.resolve()


@contextlib.contextmanager
def _hydra_config_set(config: DictConfig) -> Iterator[None]:
    """Make `${hydra:...}` interpolations resolvable in the sweep process, then restore."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    previous = instance.cfg
    readonly = config.hydra._get_flag("readonly")
    try:
        instance.set_config(config)
        yield
    finally:
        instance.cfg = previous
        OmegaConf.set_readonly(config.hydra, readonly)


def _resolved(config: DictConfig, key: str) -> Any:
    value = OmegaConf.select(config, key, default=None)
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _parent_run_name(sweep_dir: Path) -> str:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", sweep_dir.parent.name):
        return f"cv-{sweep_dir.parent.name}_{sweep_dir.name}"
    return f"cv-{sweep_dir.name}"


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


__all__ = [
    "CrossValidationCallback",
]
