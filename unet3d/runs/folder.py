"""Claiming a run folder for one job, and writing into it only once the job may use it.

Hydra creates the job's folder, but writes nothing into it (``hydra.output_subdir: null`` and
no file handler in ``conf/hydra/default.yaml``). :class:`RunFolder` decides first:

1. a folder that already holds work of an earlier job (``checkpoints/`` with files,
   ``mlflow_run_id`` or ``results.json``) is refused unless ``resume=true``
   (:class:`~unet3d.errors.RunFolderError`, not one byte of the folder changed);
2. a fresh job commits at once: ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``
   (the files Hydra itself would write) and the log file ``run.log``, which receives every log
   record of the job from its first line on;
3. a resume commits only once the resume is accepted (identity compared, checkpoint restored):
   until then log records are held in memory and nothing is written, so a refused or failed
   resume leaves the folder exactly as it was.

Only the chief process (rank 0) of a multi-process launch checks and writes; the other ranks
share the chief's folder and log to the console.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

from unet3d.errors import RunFolderError
from unet3d.runs.files import write_text_atomic

log = logging.getLogger(__name__)

#: Folder of Hydra's config files inside a run folder.
HYDRA_SUBDIR = ".hydra"
#: The job's log file (Hydra's default name for the job ``run``).
LOG_FILE = "run.log"
#: What marks a folder as holding an earlier job's work.
CHECKPOINT_FOLDER = "checkpoints"
RUN_ID_FILE = "mlflow_run_id"
RESULTS_FILE = "results.json"
#: Hydra's default job-log format (``hydra/job_logging/default.yaml``).
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def used_markers(run_dir: str | os.PathLike) -> list[str]:
    """What in ``run_dir`` shows an earlier job's work: ``checkpoints/``, ``mlflow_run_id``,
    ``results.json`` (in that order; empty for a new or empty folder)."""
    run_dir = Path(run_dir)
    found = []
    checkpoints = run_dir / CHECKPOINT_FOLDER
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        found.append(f"{CHECKPOINT_FOLDER}/")
    for name in (RUN_ID_FILE, RESULTS_FILE):
        if (run_dir / name).exists():
            found.append(name)
    return found


def refusal(run_dir: str | os.PathLike, markers: list[str]) -> str:
    """The one-line message refusing a used folder to a job without ``resume=true``."""
    return (f"{run_dir}: this folder already holds an earlier run ({', '.join(markers)}); "
            "pass resume=true to continue that run, or choose another folder (drop "
            "hydra.run.dir / hydra.sweep.dir, or point it at a new folder)")


class RunFolder:
    """One job's claim on its output folder (see the module doc).

    Args:
        path: the job's output folder (Hydra's ``hydra.runtime.output_dir``).
        resume: the job continues an earlier run in this folder (``resume=true``).
        is_chief: this process checks and writes (rank 0); other ranks only log to console.
    """

    def __init__(self, path: str | os.PathLike, resume: bool, is_chief: bool = True) -> None:
        self.path = Path(path)
        self.resume = bool(resume)
        self.is_chief = bool(is_chief)
        self.committed = False
        self._buffer: logging.handlers.MemoryHandler | None = None
        self._file_handler: logging.Handler | None = None

    # ------------------------------------------------------------------ claim

    def claim(self) -> None:
        """Refuse a used folder without ``resume``; start holding log records in memory.

        Raises:
            RunFolderError: the folder holds an earlier job's work and ``resume`` is false.
        """
        if self.is_chief and not self.resume:
            markers = used_markers(self.path)
            if markers:
                raise RunFolderError(refusal(self.path, markers))
        if self.is_chief and self._buffer is None:
            self._buffer = logging.handlers.MemoryHandler(
                capacity=1_000_000, flushLevel=logging.CRITICAL + 1, target=None,
                flushOnClose=False,
            )
            logging.getLogger().addHandler(self._buffer)

    def commit(self, task_cfg: Any = None, hydra_cfg: Any = None,
               overrides: list[str] | None = None) -> None:
        """Write ``.hydra/`` and open ``run.log`` (with the records held so far); idempotent.

        Args:
            task_cfg: the job's composed config without ``hydra`` (``config.yaml``).
            hydra_cfg: Hydra's own config node (``hydra.yaml``); None skips the file.
            overrides: the job's task overrides (``overrides.yaml``).
        """
        if self.committed:
            return
        self.committed = True
        if not self.is_chief:
            self.release()
            return
        from omegaconf import OmegaConf

        self.path.mkdir(parents=True, exist_ok=True)
        hydra_dir = self.path / HYDRA_SUBDIR
        if task_cfg is not None:
            write_text_atomic(hydra_dir / "config.yaml", OmegaConf.to_yaml(task_cfg))
        if hydra_cfg is not None:
            write_text_atomic(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
        if overrides is not None:
            write_text_atomic(hydra_dir / "overrides.yaml",
                              OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
        handler = logging.FileHandler(self.path / LOG_FILE, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.NOTSET)
        logging.getLogger().addHandler(handler)
        self._file_handler = handler
        if self._buffer is not None:
            self._buffer.setTarget(handler)
            self._buffer.flush()
        self._drop_buffer()

    def release(self) -> None:
        """Stop holding log records (a refused or failed job: they are dropped)."""
        self._drop_buffer()

    def close(self) -> None:
        """Detach the log file handler (end of the job in a process that runs several)."""
        self._drop_buffer()
        if self._file_handler is not None:
            self._file_handler.flush()
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None

    def _drop_buffer(self) -> None:
        if self._buffer is not None:
            logging.getLogger().removeHandler(self._buffer)
            self._buffer.setTarget(None)
            self._buffer.buffer.clear()
            self._buffer = None


#: Jobs of this process whose folder was refused or whose resume was refused or failed: their
#: folders were left untouched (no results.json), so the sweep summary learns of them here.
UNCOMMITTED_FAILURES: list[tuple[str, str]] = []


def record_uncommitted_failure(output_dir: str | os.PathLike, error: str) -> None:
    """Remember a job that failed before it could write into its folder (see module doc)."""
    UNCOMMITTED_FAILURES.append((str(output_dir), str(error).splitlines()[0]))


def refuse_used_sweep_dir(config: Any, sweep_dir: Path) -> None:
    """Refuse a sweep without ``resume=true`` whose sweep dir already holds used job folders.

    Raises:
        RunFolderError: one line naming the sweep dir, a used job folder and the ways out.
    """
    from omegaconf import OmegaConf

    from unet3d.runs.results import find_job_dirs

    if OmegaConf.select(config, "resume", default=False) is True or not sweep_dir.is_dir():
        return
    for job_dir in find_job_dirs(sweep_dir, HYDRA_SUBDIR):
        markers = used_markers(job_dir)
        if markers:
            raise RunFolderError(
                f"{sweep_dir}: this sweep dir already holds earlier jobs ({job_dir.name}: "
                f"{', '.join(markers)}); pass resume=true to continue that sweep, or choose "
                "another folder (drop hydra.sweep.dir, or point it at a new folder)"
            )
