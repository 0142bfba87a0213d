"""Hydra callback turning a `--multirun` sweep into one MLflow cross-validation experiment.

An entry point beside `unet3d.run`: Hydra calls it around the sweep's jobs. It drives the
sweep's MLflow runs (`unet3d.tracking`) and, with `tracking.register_model`, publishes the
fold ensemble of a finished sweep (`unet3d.serving.registration`).

Registered in `conf/hydra/default.yaml`::

    callbacks:
      cv_summary:
        _target_: unet3d.sweep_callback.CrossValidationCallback

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

Hyperparameter search (`hparams_search=...`, Hydra's Optuna sweeper; unet3d.tracking.study):
the parent run is the *study run*, reopened by a rerun of the same study (same study name and
storage) so that all its trials nest under one run; `on_multirun_end` logs the study's best
trial and trial counts instead of a fold summary, and exits non-zero only when no job of this
invocation finished (a failed trial is an Optuna FAIL, the study goes on). A trial of
`mode=cross_validate` runs its folds as a sweep of its own whose parent run, nested under the
study run through `parent_run_id`, is the trial's run (study run -> trial run -> fold runs).

Stopped before `on_multirun_end` by Ctrl-C or SIGTERM, the sweep's trials are told FAIL and
its runs end KILLED (`unet3d.tracking.trials.stop_sweep`, run by `unet3d.run.cli`); by another
error, an `atexit` hook ends the parent run FAILED. After a SIGKILL the study's next start
fails the trials whose sweep process is gone (`unet3d.tracking.trials`).
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from unet3d.runs import results as results_module
from unet3d.runs.files import write_text_atomic
from unet3d.runs.folder import HYDRA_SUBDIR, UNCOMMITTED_FAILURES, refuse_used_sweep_dir
from unet3d.runs.naming import parse_override
from unet3d.runs.provenance import git_tags
from unet3d.runtime.signals import install_termination_handlers, on_stop, stop_signal
from unet3d.tracking import study as study_module
from unet3d.tracking import summary as summary_module
from unet3d.tracking import trials as trials_module
from unet3d.tracking.cv_runs import log_cv_summary
from unet3d.tracking.parent_run import (
    PARENT_RUN_ID_FILE,
    hydra_config_set,
    parent_run_name,
    read_parent_run_id,
)
from unet3d.tracking.parent_run import resolved as _resolved
from unet3d.tracking.parent_run import sweep_dir_of as _sweep_dir
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
        parent_run_id: nest the sweep's parent run under this run (a trial's fold sweep under
            the study run, see unet3d.modes.cross_validate); None: a top-level run.
        run_name: name of the parent run (default ``cv-<sweep dir>``, ``optuna-<study>``).
        run_kind: tag ``unet3d.run_kind`` of the parent run (``cv_parent``; a study sweep's
            run is ``optuna_study``).
    """

    def __init__(
        self,
        continue_on_failure: bool = True,
        exit_code: int = 1,
        group_keys_exclude: Sequence[str] = ("fold",),
        parent_run_id: str | None = None,
        run_name: str | None = None,
        run_kind: str = "cv_parent",
    ) -> None:
        self.continue_on_failure = bool(continue_on_failure)
        self.exit_code = int(exit_code)
        self.group_keys_exclude = tuple(str(key) for key in group_keys_exclude)
        self.parent_run_id = str(parent_run_id) if parent_run_id else None
        self.run_name = str(run_name) if run_name else None
        self.run_kind = str(run_kind)
        self.tracker: Tracker | None = None
        self._finalized = False
        self._restore_sigterm: Any = None
        self._study: trials_module.StudyOwner | None = None

    # ------------------------------------------------------------------ hooks

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Create (or reopen) the parent run and write its id to the sweep dir."""
        from unet3d.errors import Unet3dError

        try:
            sweep_dir = _sweep_dir(config)
            refuse_used_sweep_dir(config, sweep_dir)
            if study_module.is_study_sweep(config):
                with hydra_config_set(config):
                    self._study = trials_module.StudyOwner.open(config, sweep_dir)
        except Exception as error:  # noqa: BLE001 - Hydra would only warn: fail loudly
            if isinstance(error, Unet3dError):
                logger.error("%s", error)
            else:
                logger.exception("Could not open the sweep's Optuna study: %s", error)
            self._finalized = True
            raise SystemExit(self.exit_code) from None
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            self.tracker = self._parent_tracker(config, sweep_dir)
            if self.tracker.active or self._study is not None:
                self._register_exit_guard()
            if self._study is not None:
                from unet3d.modes.cross_validate import run_id_of

                self._study.end_recovered_runs(self.tracker, run_id_of)
        except Exception as error:  # noqa: BLE001 - Hydra would only warn: fail loudly
            if isinstance(error, Unet3dError) or str(error).startswith("tracking."):
                # a store that is down, locked, a deleted experiment, ...: one line
                logger.error("Could not create the sweep's parent MLflow run: %s", error)
                self._finalized = True
            else:
                logger.exception("Could not create the sweep's parent MLflow run: %s", error)
            raise SystemExit(self.exit_code) from None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A study's job records who runs its trial (``unet3d.tracking.trials``)."""
        if study_module.is_study_sweep(config):
            trials_module.claim_for_job(config)

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
        """Summarise the folds (or the study), log it on the parent run, exit non-zero on
        failure."""
        failed_reason = None
        tracker = self.tracker
        study = study_module.is_study_sweep(config)
        try:
            sweep_dir = _sweep_dir(config)
            if tracker is None:
                tracker = self.tracker = self._parent_tracker(config, sweep_dir, log_params=False)
            results = _outermost(results_module.collect_job_results(sweep_dir, HYDRA_SUBDIR))
            if study:
                failed_reason = self._end_study(tracker, config, sweep_dir, results)
            else:
                failed_reason = self._end_folds(tracker, sweep_dir, results, config)
        except Exception as error:  # noqa: BLE001 - Hydra would only warn: fail loudly
            what = "study summary" if study else "cross-validation summary"
            logger.exception("The %s FAILED: %s", what, error)
            failed_reason = f"{what} failed: {type(error).__name__}: {error}"
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

    def _end_folds(
        self, tracker: Tracker | None, sweep_dir: Path, results: list[dict[str, Any]],
        config: DictConfig | None = None,
    ) -> str | None:
        """The cross-validation summary; returns why the sweep failed (None: it did not).

        With ``tracking.register_model``, a sweep whose folds all finished (one group) is
        registered as a fold ensemble on its parent run (``unet3d.serving.registration``).
        """
        failed_reason = None
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
        failed_reason = _with_refused_jobs(failed_reason)
        level = logging.ERROR if failed_reason else logging.INFO
        logger.log(level, "Cross-validation summary (%s):\n%s", sweep_dir, markdown)
        if tracker is not None and tracker.running:
            log_cv_summary(tracker, summaries, paths, markdown, sweep_dir, failed)
            if not failed_reason and len(summaries) == 1 and config is not None:
                from unet3d.serving.registration import publish_model

                means = {name: stat.mean for name, stat in summaries[0].metrics.items()}
                publish_model(tracker, config, str(sweep_dir), means, kind="ensemble")
            tracker.end("FAILED" if failed_reason else "FINISHED", failed_reason)
        return failed_reason

    def _end_study(self, tracker: Tracker | None, config: DictConfig, sweep_dir: Path,
                   results: list[dict[str, Any]]) -> str | None:
        """The study summary (every invocation's trials, read from the study's storage).

        Failed trials are part of a study: the sweep fails only when no job of this
        invocation finished (or the summary itself fails).
        """
        with hydra_config_set(config):
            settings = study_module.study_settings(config)
        summary = study_module.summarize_study(settings)
        finished = [record for record in results if record.get("status") == "FINISHED"]
        failed_reason = None if finished else (
            f"no trial of this invocation finished ({len(results)} job(s) in {sweep_dir})")
        failed_reason = _with_refused_jobs(failed_reason)
        logger.log(logging.ERROR if failed_reason else logging.INFO,
                   "Optuna study (%s), %d of %d job(s) of this invocation finished:\n%s",
                   settings.key, len(finished), len(results), summary.markdown())
        if tracker is not None and tracker.running:
            study_module.log_study_summary(tracker, summary, sweep_dir)
            tracker.end("FAILED" if failed_reason else "FINISHED", failed_reason)
        return failed_reason

    # ------------------------------------------------------------------ internals

    def _parent_tracker(
        self, config: DictConfig, sweep_dir: Path, log_params: bool = True
    ) -> Tracker:
        with hydra_config_set(config):
            tracking_cfg = _resolved(config, "tracking") or {}
            root_dir = _resolved(config, "paths.root_dir") or os.getcwd()
            task_overrides = [str(item) for item in config.hydra.overrides.task]
            swept = [parse_override(item)[0] for item in task_overrides]
            params = flatten_config(config, exclude=("hydra", *swept)) if log_params else None
            study = (study_module.study_settings(config)
                     if study_module.is_study_sweep(config) else None)
        tracker = Tracker(tracking_cfg, root_dir)
        if not tracker.active:
            logger.info("Tracking disabled: the sweep summary is written to %s only", sweep_dir)
            return tracker
        launcher = OmegaConf.select(config, "hydra.launcher._target_", default="") or ""
        run_name, extra_tags = self.run_name or parent_run_name(sweep_dir), {}
        if study is not None:
            # A rerun of the study reopens its run (Tracker.start reopens the id in the file).
            run_name = self.run_name or f"optuna-{study.study_name}"
            extra_tags = {"unet3d.run_kind": study_module.STUDY_RUN_KIND,
                          study_module.STUDY_TAG: study.key}
            found = None
            if read_parent_run_id(sweep_dir) is None:
                experiment = str((tracking_cfg or {}).get("experiment_name") or "unet3d")
                found = study_module.find_study_run(tracker.client, experiment, study)
            if found:
                write_text_atomic(sweep_dir / PARENT_RUN_ID_FILE, found + "\n")
                logger.info("Optuna study %s: reopening its MLflow run %s", study.key, found)
        tags = {
            "unet3d.run_kind": self.run_kind,
            "unet3d.sweep_dir": str(sweep_dir),
            "unet3d.overrides": " ".join(task_overrides),
            "unet3d.launcher": str(launcher).rsplit(".", 1)[-1],
            **git_tags(root_dir),
            **extra_tags,
        }
        tracker.start(
            None,
            sweep_dir,
            run_name=run_name,
            tags=tags,
            parent_run_id=self.parent_run_id,
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

    def _register_exit_guard(self) -> None:
        self._restore_sigterm = install_termination_handlers()
        on_stop(self._stopped)
        atexit.register(self._end_abandoned_parent)

    def _stopped(self) -> str | None:
        """On SIGINT / SIGTERM (``unet3d.run.cli``): see `trials_module.stop_sweep`."""
        if self._finalized:
            return None
        self._finalized = True
        from unet3d.modes.cross_validate import run_id_of

        return trials_module.stop_sweep(self._study, self.tracker,
                                        f"stopped by {stop_signal() or 'SIGINT'}", run_id_of)

    def _end_abandoned_parent(self) -> None:
        tracker = self.tracker
        if self._finalized or tracker is None or not tracker.running:
            return
        interrupted = stop_signal() is not None  # Ctrl-C / SIGTERM (the handlers installed)
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


def _with_refused_jobs(failed_reason: str | None) -> str | None:
    """Add the jobs refused before they could write a result (and forget them)."""
    if not UNCOMMITTED_FAILURES:
        return failed_reason
    refused = "; ".join(f"{Path(folder).name}: {error}" for folder, error in UNCOMMITTED_FAILURES)
    UNCOMMITTED_FAILURES.clear()
    prefix = f"{failed_reason}; " if failed_reason else ""
    return prefix + f"job(s) refused, their folders left unchanged: {refused}"


def _outermost(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave out job dirs nested in another job dir (a cross_validate job's own fold sweep)."""
    dirs = [Path(str(record.get("job_dir", ""))) for record in results]
    return [record for record, path in zip(results, dirs, strict=True)
            if not any(other != path and other in path.parents for other in dirs)]


__all__ = [
    "CrossValidationCallback",
]
