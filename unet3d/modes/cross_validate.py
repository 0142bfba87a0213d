"""``mode=cross_validate``: run K folds as a sweep of their own and return their mean metrics.

The objective of a cross-validated hyperparameter search (``conf/hparams_search/``): a trial
trains and evaluates every fold of ``mode.folds`` so that its hyperparameters are not tuned to
one fold. The job (it imports no TensorFlow) runs, in a subprocess and in the same working
folder::

    python -m unet3d.run --multirun <this job's overrides> mode=<mode.fold_mode>
        fold=<mode.folds> hydra.sweep.dir=<this job's folder>/folds
        hydra.sweep.subdir=fold${fold} <mode.fold_overrides>

so the folds get the trial's hyperparameters, their own run folders, ``results.json`` and the
sweep's cross-validation summary (``folds/cv_summary.md``). MLflow: the fold sweep's parent run
is this job's run (the *trial run*, tag ``unet3d.run_kind``: ``optuna_trial`` in a study), nested
under the parent run of the sweep this job belongs to (the *study run*); the fold runs nest under
the trial run. The trial run also gets the trial's overrides as params and the objective
(``objective``, ``objective/fold<k>``, see :mod:`unet3d.tracking.study`).

Returns the mean over the folds of every metric (``Dice_WT``, ...), plus ``objective``.
A fold sweep that fails (a fold failed) fails the job: an Optuna trial in state FAIL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from unet3d.errors import Unet3dError

log = logging.getLogger(__name__)

#: ``mode.name`` of this mode.
CROSS_VALIDATE = "cross_validate"
#: The fold sweep's folder inside the job's folder.
FOLDS_SUBDIR = "folds"
#: Override keys of the job that the fold sweep does not inherit (it sets its own).
NOT_INHERITED = ("mode", "fold", "hparams_search", "optimized_metric")
#: Seconds a fold sweep gets to end its runs after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 120


class FoldSweepError(Unet3dError):
    """The fold sweep of a cross_validate job failed (a fold failed, or it could not start)."""


def is_cross_validation(cfg: DictConfig) -> bool:
    """True when ``cfg`` selects ``mode=cross_validate``."""
    return OmegaConf.select(cfg, "mode.name", default=None) == CROSS_VALIDATE


def selected_folds(cfg: DictConfig) -> list[int]:
    """``mode.folds``; null: every fold, ``0 .. num_folds - 1`` (checked by the config)."""
    if cfg.mode.folds is None:
        return list(range(int(cfg.num_folds)))
    return [int(fold) for fold in cfg.mode.folds]


def fold_sweep_command(cfg: DictConfig, overrides: list[str], folds_dir: Path,
                       folds: list[int], parent_run_id: str | None, run_name: str,
                       run_kind: str) -> list[str]:
    """The command line of the fold sweep (see module doc).

    Args:
        cfg: the job's config (``mode.fold_mode``, ``mode.fold_overrides``).
        overrides: the job's task overrides (``hydra.overrides.task``); those of
            ``NOT_INHERITED`` keys, ``mode.*`` keys (this mode's own) and ``hydra*`` keys are
            left out.
        folds_dir: the fold sweep's ``hydra.sweep.dir``.
        folds: the folds to run.
        parent_run_id: the run the trial run nests under (None: a top-level run).
        run_name: the trial run's name; run_kind: its ``unet3d.run_kind`` tag.
    """
    from unet3d.runs.naming import parse_override

    inherited = [item for item in overrides
                 if (key := parse_override(item)[0]) not in NOT_INHERITED
                 and not key.lstrip("+~").startswith(("hydra", "mode."))]
    callback = "hydra.callbacks.cv_summary"
    command = [sys.executable, "-m", "unet3d.run", "--multirun", *inherited,
               f"mode={cfg.mode.fold_mode}", "fold=" + ",".join(str(fold) for fold in folds),
               f"hydra.sweep.dir={_quoted(str(folds_dir))}", "hydra.sweep.subdir=fold${fold}",
               f"++{callback}.run_name={run_name}", f"++{callback}.run_kind={run_kind}"]
    if parent_run_id:
        command.append(f"++{callback}.parent_run_id={parent_run_id}")
    command += [str(item) for item in cfg.mode.fold_overrides]
    return command


def _quoted(text: str) -> str:
    """``text`` as a quoted value of Hydra's override grammar (job folders hold ``=`` and ``,``)."""
    quote = "'" if "'" not in text else '"'
    return quote + text.replace(quote, "\\" + quote) + quote


def run_id_of(output_dir: str | os.PathLike) -> str | None:
    """The trial run of a cross_validate job folder (the fold sweep's parent run), or None."""
    from unet3d.tracking.parent_run import read_parent_run_id

    return read_parent_run_id(Path(output_dir) / FOLDS_SUBDIR)


def run_cross_validation(cfg: DictConfig, output_dir: Path, overrides: list[str],
                         folds: list[int]) -> dict[str, float]:
    """Run the fold sweep, then return the folds' mean metrics and record them.

    Args:
        cfg: the job's validated config; output_dir: its run folder.
        overrides: the job's task overrides; folds: :func:`selected_folds`.

    Returns:
        ``{metric: mean over the folds}`` plus ``objective`` (mean of the per-fold objectives).

    Raises:
        FoldSweepError: the fold sweep exited non-zero (a fold failed) or left no result.
        ConfigError: an ``optimized_metric`` name is not among the folds' metrics.
    """
    from hydra.core.hydra_config import HydraConfig

    from unet3d.runs.results import write_job_result
    from unet3d.tracking.parent_run import current_parent_run_id, current_sweep_dir
    from unet3d.tracking.study import TRIAL_RUN_KIND, trial_number

    hydra_cfg = HydraConfig.get()
    in_study = str(OmegaConf.select(hydra_cfg, "sweeper._target_", default="")).endswith(
        "OptunaSweeper")
    parent = current_parent_run_id()
    number = trial_number(current_sweep_dir(), int(hydra_cfg.job.num)) if in_study else None
    run_name = f"trial-{number}" if number is not None else f"cv-{output_dir.name}"
    folds_dir = output_dir / FOLDS_SUBDIR
    command = fold_sweep_command(cfg, overrides, folds_dir, folds, parent, run_name,
                                 TRIAL_RUN_KIND if in_study else CROSS_VALIDATE)
    log.info("cross_validate: folds %s in %s", folds, folds_dir)
    log.debug("fold sweep: %s", command)
    status = _run(command, cwd=str(hydra_cfg.runtime.cwd))
    if status != 0:
        raise FoldSweepError(f"cross_validate: the fold sweep in {folds_dir} failed (exit "
                             f"status {status}); see {folds_dir / 'cv_summary.md'}")
    metrics, per_fold = _fold_metrics(cfg, folds_dir, folds)
    run_id = run_id_of(output_dir)
    _log_trial(cfg, run_id, overrides, metrics, per_fold,
               {} if number is None else {"optuna.trial_number": str(number)})
    write_job_result(output_dir, status="FINISHED", fold=None, overrides=overrides,
                     metrics=metrics, mlflow_run_id=run_id, folds=folds,
                     fold_objectives={str(k): v for k, v in per_fold.items()})
    log.info("cross_validate: objective %.6g (folds: %s)", metrics["objective"],
             ", ".join(f"{fold}: {value:.6g}" for fold, value in per_fold.items()))
    return metrics


def _run(command: list[str], cwd: str) -> int:
    """Run the fold sweep; on Ctrl-C / SIGTERM let it end its runs, then re-raise.

    On Linux the fold sweep gets SIGTERM if this process dies (``PR_SET_PDEATHSIG``), so a
    SIGKILL of the trial's sweep does not leave it training alone.
    """
    environment = {**os.environ, "UNET3D_NESTED_SWEEP": "1"}  # unet3d.run.NESTED_SWEEP_VARIABLE
    child = subprocess.Popen(command, cwd=cwd, env=environment,
                             preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        return child.wait()
    except BaseException:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        raise


def _die_with_parent() -> None:
    """In the child before ``exec``: SIGTERM when the parent dies (Linux ``prctl``)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _fold_metrics(cfg: DictConfig, folds_dir: Path,
                  folds: list[int]) -> tuple[dict[str, float], dict[int, float]]:
    from unet3d.runs.results import collect_job_results
    from unet3d.tracking.study import DEFAULT_OPTIMIZED_METRIC, objective_value
    from unet3d.tracking.study import optimized_metric_names as names_of
    from unet3d.tracking.summary import cross_validation_summary

    records = collect_job_results(folds_dir)
    finished = {int(r["fold"]): r for r in records if r.get("status") == "FINISHED"}
    missing = [fold for fold in folds if fold not in finished]
    if missing:
        raise FoldSweepError(f"cross_validate: no finished result for fold(s) {missing} in "
                             f"{folds_dir}")
    names = names_of(cfg) or DEFAULT_OPTIMIZED_METRIC
    per_fold = {fold: objective_value(finished[fold]["metrics"], names) for fold in folds}
    (group,) = cross_validation_summary([finished[fold] for fold in folds])
    metrics = {name: summary.mean for name, summary in group.metrics.items()}
    metrics["objective"] = float(sum(per_fold.values()) / len(per_fold))
    return metrics, per_fold


def _log_trial(cfg: DictConfig, run_id: str | None, overrides: list[str],
               metrics: dict[str, float], per_fold: dict[int, float],
               tags: dict[str, str]) -> None:
    """The trial's overrides as params, its objective as metrics and ``tags``, on its run."""
    if run_id is None:
        return
    from mlflow.entities import Metric, RunTag

    from unet3d.runs.naming import parse_override
    from unet3d.tracking.batches import log_new_params
    from unet3d.tracking.tracker import Tracker

    tracker = Tracker(OmegaConf.to_container(cfg.tracking, resolve=True),  # type: ignore[arg-type]
                      cfg.paths.root_dir, enabled=bool(cfg.tracking.enabled))
    if not tracker.active:
        return
    params = {key: value for item in overrides
              for key, value in [parse_override(item)]
              if key not in NOT_INHERITED and not key.startswith("hydra")}
    now = int(time.time() * 1000)
    values = {"objective": metrics["objective"],
              **{f"objective/fold{fold}": value for fold, value in per_fold.items()}}
    try:
        log_new_params(tracker.client, run_id, params)
        tracker.client.log_batch(run_id, metrics=[Metric(key, float(value), now, 0)
                                                  for key, value in values.items()],
                                 tags=[RunTag(key, value) for key, value in tags.items()])
    except Exception:  # noqa: BLE001 - the objective is in results.json and reaches Optuna
        log.exception("cross_validate: could not log the objective on MLflow run %s", run_id)


__all__ = [
    "CROSS_VALIDATE",
    "FOLDS_SUBDIR",
    "FoldSweepError",
    "fold_sweep_command",
    "is_cross_validation",
    "run_cross_validation",
    "run_id_of",
    "selected_folds",
]
