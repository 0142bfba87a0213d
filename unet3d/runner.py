"""The task runner: one composed config in, one job run, everything tracked.

``run_job`` is what ``python -m unet3d.run`` does with the config Hydra composed: it claims the
run folder, validates the config (before TensorFlow is imported), runs the job and turns its
errors into exit statuses. ``run_task`` sets devices, precision and the distribution strategy
once, builds the job's record and its ``Job`` (``unet3d.modes.job``: ``start``, ``check_data``,
``finish``) and runs the mode: ``unet3d.modes.<mode.name>.run(job)``. The work lives in the
modes and in the packages ``data``, ``model``, ``training``, ``inference``, ``evaluation``,
``runtime`` and ``tracking``.

A user error (bad value, bad data, missing device) ends the job with one ERROR line and exit
status 1; SIGTERM and Ctrl-C end it with one ERROR line and status 143 or 130 (its MLflow run
KILLED). Inside a ``--multirun`` sweep a failed job is recorded (results.json, MLflow run
FAILED) and the sweep goes on; the sweep callback summarises the folds and makes the sweep exit
non-zero. What a job returns to Hydra's sweeper: its metrics, or, when ``optimized_metric`` is
set (``conf/hparams_search/``), their mean, the objective the Optuna sweeper optimises
(``unet3d.tracking.study``); a failed job returns None (an Optuna FAIL trial).
``mode=cross_validate`` runs its folds as a sweep of their own (``unet3d.modes.cross_validate``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from unet3d.config import TRAINING_MODES, validate
from unet3d.errors import Unet3dError
from unet3d.modes.job import Job, Runtime

log = logging.getLogger(__name__)

#: Exit statuses of a job stopped by SIGTERM and by Ctrl-C (128 + the signal's number).
EXIT_TERMINATED = 143
EXIT_INTERRUPTED = 130


def run_job(cfg: DictConfig) -> Any:
    """Claim the run folder, validate ``cfg`` and run its job (see the module doc).

    Returns:
        The job's metrics, the sweeper's objective, or None for a failed sweep job.
    """
    from unet3d.modes.cross_validate import (
        is_cross_validation,
        run_cross_validation,
        selected_folds,
    )
    from unet3d.runs.folder import RunFolder
    from unet3d.runtime.launch import launch_rank
    from unet3d.tracking.study import objective_value, optimized_metric_names

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir, overrides = hydra_cfg.runtime.output_dir, list(hydra_cfg.overrides.task)
    folder = RunFolder(output_dir, resume=bool(cfg.get("resume", False)),
                       is_chief=launch_rank() == 0)

    def commit() -> None:
        folder.commit(cfg, HydraConfig.instance().cfg, overrides)

    try:
        folder.claim()
        if not folder.resume:
            commit()
        objective = optimized_metric_names(cfg)
        validate(cfg)
        if folder.is_chief:
            _check_tracking_store(cfg)
        if is_cross_validation(cfg):
            commit()
            metrics = run_cross_validation(cfg, Path(output_dir), overrides, selected_folds(cfg))
        else:
            metrics = run_task(cfg, commit, overrides)
        if objective is None:
            return metrics
        value = objective_value(metrics, objective)
        log.info("objective (mean of %s): %.6g", ", ".join(objective), value)
        return value
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM as TerminationRequested
        if multirun:
            raise  # stops the sweep; the sweep callback ends its parent run KILLED
        from unet3d.runs.folder import stop_hint
        from unet3d.runtime.signals import TerminationRequested

        terminated = isinstance(error, TerminationRequested)
        hint = stop_hint(output_dir, OmegaConf.select(cfg, "mode.name") in TRAINING_MODES)
        log.error("job stopped: %s; its MLflow run is KILLED (%s)",
                  error if terminated else "interrupted (Ctrl-C)", hint)
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    except Exception as error:
        if isinstance(error, Unet3dError):
            log.error("%s", error)
        else:
            log.exception("job failed: %s", error)
        if not multirun:
            sys.exit(1)
        _record_failed_sweep_job(folder, output_dir, overrides, error)
        return None
    finally:
        folder.close()


def _check_tracking_store(cfg: DictConfig) -> None:
    """The MLflow store answers and is usable, before anything is built (run by rank 0 only):
    else one line naming ``tracking.uri`` (``unet3d.tracking.store_check``)."""
    if not OmegaConf.select(cfg, "tracking.enabled", default=False):
        return
    from unet3d.tracking.store_check import check_store

    check_store(OmegaConf.to_container(cfg.tracking, resolve=True), cfg.paths.root_dir)


def _record_failed_sweep_job(folder: Any, output_dir: str, overrides: list[str],
                             error: Exception) -> None:
    """Record a failed job of a sweep; the sweep callback summarises every fold and makes the
    sweep exit non-zero. A refused folder, or a refused / failed resume, stays as it was."""
    if not folder.committed:
        from unet3d.runs.folder import record_uncommitted_failure

        record_uncommitted_failure(output_dir, str(error))
        return
    from unet3d.modes.cross_validate import run_id_of
    from unet3d.runs.identity import read_identity, write_job_result
    from unet3d.tracking.tracker import read_run_id_file

    record = read_identity(output_dir)  # run_identity.json, else the .hydra/ config it wrote
    write_job_result(output_dir, "FAILED", record.fold if record is not None else None,
                     overrides, error=str(error),
                     mlflow_run_id=read_run_id_file(Path(output_dir) / "mlflow_run_id")
                     or run_id_of(output_dir))


def setup_runtime(cfg: DictConfig, recorded_precision: Any = None) -> Runtime:
    """Configure devices, the distribution context and the Keras dtype policy, in that order
    (``precision=auto`` may run a probe convolution, which starts TensorFlow's runtime).

    ``recorded_precision``: the ``precision`` record of the run being resumed (``auto`` keeps
    its resolved policy).

    Raises:
        DeviceError: the device, precision or strategy is not available here.
        ConfigError: an unknown strategy setting.
    """
    logging.getLogger("absl").setLevel(logging.WARNING)  # per-save "Sharding callback" lines
    from unet3d.runtime.devices import configure_devices
    from unet3d.runtime.distribute import create_context, process_env
    from unet3d.runtime.precision import configure_precision

    process = process_env(cfg.strategy)
    device = configure_devices(cfg.device, local_rank=process.local_rank,
                               local_size=process.local_size)
    context = create_context(cfg.strategy, device)
    precision = configure_precision(cfg.precision, device.type, cache_dir=cfg.paths.data_dir,
                                    recorded=recorded_precision)
    log.info("device %s (%s), precision %s (compute %s, variables %s%s), strategy %s with "
             "%d replica(s) in %d process(es)", device.type, ", ".join(device.names),
             precision.policy_name, precision.compute_dtype, precision.variable_dtype,
             ", XLA" if precision.xla else "", context.name,
             context.num_replicas, context.world_size)
    return Runtime(device, precision, context)


#: Modes that need no model and so no TensorFlow: their runtime is a placeholder (one process,
#: no device, no precision) and TensorFlow is never imported.
NO_TENSORFLOW_MODES = ("score",)


def light_runtime() -> Runtime:
    """The runtime of a mode of ``NO_TENSORFLOW_MODES``: one chief process, nothing configured."""
    from types import SimpleNamespace

    device = SimpleNamespace(type="none", names=[], onednn="n/a")
    precision = SimpleNamespace(policy_name="none", compute_dtype="none", variable_dtype="none",
                                loss_scale=False, xla=False, params={},
                                identity=lambda device_type: {})
    context = SimpleNamespace(name="none", num_replicas=1, world_size=1, is_chief=True)
    return Runtime(device, precision, context)


def run_task(cfg: DictConfig, commit: Callable[[], None] | None = None,
             overrides: list[str] | None = None) -> dict[str, float]:
    """Run ``cfg.mode.name`` and return its final metrics (also logged and in results.json).

    Args:
        cfg: the validated, composed config.
        commit: writes the job's ``.hydra/`` files and opens its ``run.log`` (see
            :mod:`unet3d.runs.folder`); ``Job.start`` calls it before anything is written into
            the run folder. A resume of a training mode starts only once the resume is
            accepted: the recorded identity matches and the checkpoint is restored.
        overrides: the job's command-line overrides.

    Raises:
        RunFolderError: ``resume=true`` and the run in the folder is another experiment.
    """
    from unet3d.modes import mode_function
    from unet3d.runs.identity import RunIdentity
    from unet3d.tracking.parent_run import current_parent_run_id
    from unet3d.tracking.run_status import tracked_run
    from unet3d.tracking.tracker import Tracker

    output_dir = Path(cfg.paths.output_dir)
    mode = cfg.mode.name
    run_mode = mode_function(mode)
    resuming = bool(cfg.resume) and mode in TRAINING_MODES
    record = RunIdentity.from_config(cfg)
    recorded = check_resume(output_dir, record) if resuming else None
    if mode in NO_TENSORFLOW_MODES:
        runtime = light_runtime()
    else:
        runtime = setup_runtime(cfg, recorded.precision if recorded is not None else None)
    record.precision.update(runtime.precision.identity(runtime.device.type))
    tracker = Tracker(cfg.tracking, Path(cfg.paths.root_dir), enabled=bool(cfg.tracking.enabled),
                      is_chief=runtime.context.is_chief)
    job = Job(cfg, runtime, tracker, output_dir, record=record, commit=commit,
              overrides=overrides, resuming=resuming)
    if not resuming:
        job.start()
    with tracked_run(tracker):
        try:
            metrics = run_mode(job)
            job.finish(metrics)
            if (runtime.context.is_chief and mode in TRAINING_MODES
                    and current_parent_run_id() is None):
                # Inside a sweep the parent run registers the fold ensemble instead.
                from unet3d.serving.registration import publish_model

                publish_model(tracker, cfg, str(output_dir), metrics, kind="job")
            if runtime.context.is_chief and mode == "export" and cfg.tracking.log_model:
                # The export's served model: runs without TensorFlow.
                from unet3d.modes.export import export_folder_of
                from unet3d.serving.export_model import log_export_model

                log_export_model(tracker, cfg, export_folder_of(cfg, output_dir))
        finally:
            # Also for a failed or interrupted job: its log says why.
            _log_job_files(tracker, output_dir)
    return metrics


def check_resume(output_dir: Path, identity: Any) -> Any:
    """Refuse a resume whose experiment differs from the run recorded in ``output_dir``.

    Returns:
        The recorded ``RunIdentity`` (None when the folder has none).

    Raises:
        RunFolderError: one line naming every differing key (fold, num_folds, seed, data set,
            model settings).
    """
    from unet3d.errors import RunFolderError
    from unet3d.runs.identity import read_identity

    recorded = read_identity(output_dir)
    if recorded is None:
        log.warning("resume: %s has no run identity record; cannot check that it is the same "
                    "experiment", output_dir)
        return None
    differences = recorded.differences(identity)
    if differences:
        raise RunFolderError(
            f"resume: the run in {output_dir} {'; '.join(_describe(d) for d in differences)}"
            "; resume it with its own settings, or drop resume=true to start a new run in "
            "another folder"
        )
    return recorded


def _describe(difference: str) -> str:
    if difference.startswith("fold "):
        return f"is {difference}"
    return f"was trained with {difference}"


def _log_job_files(tracker: Any, output_dir: Path) -> None:
    """Log the job's ``.hydra/`` folder and its log file (``run.log``) on the job's run."""
    from unet3d.runs.folder import HYDRA_SUBDIR, LOG_FILE

    hydra_dir = output_dir / HYDRA_SUBDIR
    if hydra_dir.is_dir():
        tracker.log_artifacts(hydra_dir, hydra_dir.name)
    log_file = output_dir / LOG_FILE
    if log_file.is_file():
        for handler in logging.getLogger().handlers:
            handler.flush()
        tracker.log_artifact(log_file)
