"""The task runner's command line: ``python -m unet3d.run [group=option ...] [key=value ...]``.

Hydra composes ``conf/`` into one config; :func:`unet3d.config.validate` checks it without
importing TensorFlow; :func:`unet3d.runner.run_task` does the work. A user error (bad value,
bad data, missing device) ends the job with one ERROR line and exit status 1; SIGTERM and Ctrl-C
end it with one ERROR line and status 143 or 130 (its MLflow run KILLED). Inside a
``--multirun`` sweep a failed job is recorded (results.json, MLflow run FAILED) and the sweep
goes on; the sweep callback summarises the folds and makes the sweep exit non-zero.

What the job returns to Hydra's sweeper: its metrics dict, or, when ``optimized_metric`` is set
(``conf/hparams_search/``), the mean of those metrics as a float, the objective the Optuna
sweeper optimises (unet3d.tracking.study). A failed job returns None: an Optuna FAIL trial.
``mode=cross_validate`` runs its folds as a sweep of their own (unet3d.modes.cross_validate).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from unet3d.config import validate
from unet3d.errors import Unet3dError
from unet3d.modes.cross_validate import (
    is_cross_validation,
    run_cross_validation,
    run_id_of,
    selected_folds,
)
from unet3d.tracking.study import objective_value, optimized_metric_names

log = logging.getLogger("unet3d")

#: Environment variable holding the launch time that every process of one job shares.
LAUNCH_TIME_VARIABLE = "UNET3D_LAUNCH_TIME"
#: Environment variable holding the launch id (run folder suffix) every process shares.
LAUNCH_ID_VARIABLE = "UNET3D_LAUNCH_ID"
_LAUNCH_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_LAUNCH_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"
#: Exit statuses of a job stopped by SIGTERM and by Ctrl-C (128 + the signal's number).
EXIT_TERMINATED = 143
EXIT_INTERRUPTED = 130


def _launch_time() -> datetime:
    """The job's launch time: shared by every rank of a multi-process launch.

    A launcher may export ``UNET3D_LAUNCH_TIME`` (``YYYY-mm-dd_HH-MM-SS``) for all processes;
    under Horovod rank 0's clock is broadcast (see :mod:`unet3d.runtime.launch`).
    """
    shared = os.environ.get(LAUNCH_TIME_VARIABLE)
    if shared:
        try:
            return datetime.strptime(shared, _LAUNCH_TIME_FORMAT)
        except ValueError:
            raise SystemExit(
                f"{LAUNCH_TIME_VARIABLE}: expected format YYYY-mm-dd_HH-MM-SS, got {shared!r}"
            ) from None
    return datetime.now()


_started: datetime | None = None


def _launch(time_format: str) -> str:
    """``${launch:FORMAT}``: the shared-clock twin of Hydra's ``${now:FORMAT}``."""
    global _started
    if _started is None:
        _started = _launch_time()
    return _started.strftime(time_format)


_launch_id_value: str | None = None


def _launch_id() -> str:
    """``${launch_id:}``: a short id of this launch, the suffix of its run / sweep folder.

    ``UNET3D_LAUNCH_ID`` when exported (every rank of a multi-process launch gets the same one,
    see :func:`unet3d.runtime.launch.share_launch_time`), else 6 random hex digits: two jobs
    started in the same second by different processes get different folders.
    """
    global _launch_id_value
    if _launch_id_value is None:
        shared = os.environ.get(LAUNCH_ID_VARIABLE)
        if shared:
            if not _LAUNCH_ID_PATTERN.fullmatch(shared):
                raise SystemExit(f"{LAUNCH_ID_VARIABLE}: expected 1-32 letters, digits, '-' or "
                                 f"'_', got {shared!r}")
            _launch_id_value = shared
        else:
            from unet3d.runtime.launch import derived_launch_id

            _launch_id_value = derived_launch_id()
    return _launch_id_value


def register_resolvers() -> None:
    """Register the resolvers that conf/ uses (idempotent; also used by tests)."""
    if not OmegaConf.has_resolver("launch"):
        OmegaConf.register_new_resolver("launch", _launch, use_cache=True)
    if not OmegaConf.has_resolver("launch_id"):
        OmegaConf.register_new_resolver("launch_id", _launch_id, use_cache=True)
    if not OmegaConf.has_resolver("abspath"):
        # ${abspath:PATH}: PATH made absolute against the working folder. For values resolved
        # before Hydra sets its config (the sweeper's, e.g. the Optuna study's storage), where
        # ${hydra:runtime.cwd} cannot be used.
        OmegaConf.register_new_resolver("abspath", lambda path: os.path.abspath(str(path)))
    from unet3d.runs.naming import RESOLVER_NAME, job_dirname

    if not OmegaConf.has_resolver(RESOLVER_NAME):
        OmegaConf.register_new_resolver(RESOLVER_NAME, job_dirname)


register_resolvers()


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


#: conf/ beside the package (an editable install or a source checkout). An absolute path keeps
#: the console script `unet3d`, `python -m unet3d.run` and shell completion on the same files.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    """Claim the run folder, validate the composed config and run the selected mode."""
    from unet3d.runs.folder import RunFolder

    multirun = _in_multirun()
    hydra_cfg = HydraConfig.get()
    output_dir = hydra_cfg.runtime.output_dir
    folder = RunFolder(output_dir, resume=bool(cfg.get("resume", False)),
                       is_chief=_launch_rank() == 0)
    try:
        folder.claim()
        if not folder.resume:
            _commit(folder, cfg)
        objective = optimized_metric_names(cfg)
        validate(cfg)
        if is_cross_validation(cfg):
            _commit(folder, cfg)
            metrics = run_cross_validation(cfg, Path(output_dir),
                                           list(hydra_cfg.overrides.task), selected_folds(cfg))
        else:
            from unet3d.runner import run_task  # deferred: imports TensorFlow

            metrics = run_task(cfg, commit=lambda: _commit(folder, cfg))
        if objective is None:
            return metrics
        value = objective_value(metrics, objective)
        log.info("objective (mean of %s): %.6g", ", ".join(objective), value)
        return value
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM as TerminationRequested
        if multirun:
            raise  # stops the sweep; the sweep callback ends its parent run KILLED
        from unet3d.config import TRAINING_MODES
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
        if not folder.committed:
            # A refused folder or a refused / failed resume: the folder stays as it was.
            from unet3d.runs.folder import record_uncommitted_failure

            record_uncommitted_failure(output_dir, str(error))
            return None
        # In a sweep, record the failure and let the other jobs run; the sweep callback
        # summarises every fold and makes the sweep exit non-zero.
        from unet3d.runs.results import write_job_result
        from unet3d.tracking.tracker import read_run_id_file

        write_job_result(
            output_dir, status="FAILED", fold=cfg.get("fold"),
            overrides=list(hydra_cfg.overrides.task), error=str(error),
            mlflow_run_id=read_run_id_file(os.path.join(output_dir, "mlflow_run_id"))
            or run_id_of(output_dir),
        )
        return None
    finally:
        folder.close()


def _commit(folder: Any, cfg: DictConfig) -> None:
    """Write the job's ``.hydra/`` files and open its ``run.log`` (see unet3d.runs.folder)."""
    folder.commit(cfg, HydraConfig.instance().cfg, list(HydraConfig.get().overrides.task))


def _launch_rank() -> int:
    from unet3d.runtime.launch import launch_rank

    return launch_rank()


def _prepare_launch() -> None:
    """Set up what must exist before Hydra creates the output directory.

    Every rank of a multi-process launch agrees on rank 0's launch time (hence one output
    directory); ranks other than 0 write neither ``.hydra/`` nor the log file there.
    """
    from unet3d.runtime.launch import launch_rank, non_chief_overrides, share_launch_time

    share_launch_time(LAUNCH_TIME_VARIABLE, _LAUNCH_TIME_FORMAT)
    if launch_rank() > 0:
        sys.argv.extend(non_chief_overrides(sys.argv[1:]))


def cli() -> None:
    """Console entry point (``unet3d ...``), the same as ``python -m unet3d.run``."""
    _prepare_launch()
    main()


if __name__ == "__main__":
    cli()
