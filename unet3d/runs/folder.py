"""Claiming a run folder for one job, and writing into it only once the job may use it.

Hydra creates the job's folder, but writes nothing into it (``hydra.output_subdir: null`` and
no file handler in ``conf/hydra/default.yaml``). :class:`RunFolder` decides first:

0. a folder in which another job is running right now is refused (the job holds an
   ``fcntl.flock`` on its folder while it runs);
1. a folder that holds work of an earlier job (a complete checkpoint in ``checkpoints/``, or a
   ``results.json`` of a FINISHED job) is refused unless ``resume=true``
   (:class:`~unet3d.errors.RunFolderError`, not one byte of the folder changed);
2. a folder whose earlier job stopped before its first checkpoint (bad data, Ctrl-C, kill -9:
   a ``mlflow_run_id`` or ``run_identity.json`` but no work) holds nothing to protect: a new
   job takes it over, with a warning; at commit the earlier MLflow run id moves to
   ``earlier_mlflow_run_ids`` (the run stays in MLflow as it ended) so that the job starts
   an MLflow run of its own, and the earlier job's ``results.json`` is removed;
3. a fresh job commits at once: ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``
   (the files Hydra itself would write) and the log file ``run.log``, which receives every log
   record of the job from its first line on;
4. a resume commits only once the resume is accepted (identity compared, checkpoint restored):
   until then log records are held in memory and nothing is written, so a refused or failed
   resume leaves the folder exactly as it was.

A commit also removes the temporary files (``*.tmp-<pid>``) that killed writers left in the
folder. Only the chief process (rank 0) of a multi-process launch checks and writes; the other
ranks share the chief's folder and log to the console.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import re
from pathlib import Path
from typing import Any

from unet3d.errors import RunFolderError
from unet3d.runs.checkpoint_files import CHECKPOINT_FOLDER, saved_checkpoints
from unet3d.runs.files import exclusive_lock, remove_stale_temporaries, write_text_atomic
from unet3d.runs.identity import IDENTITY_FILE, RESULTS_FILE

log = logging.getLogger(__name__)

#: Folder of Hydra's config files inside a run folder.
HYDRA_SUBDIR = ".hydra"
#: The job's log file (Hydra's default name for the job ``run``).
LOG_FILE = "run.log"
#: The files of an earlier job (``CHECKPOINT_FOLDER`` holds its checkpoints).
RUN_ID_FILE = "mlflow_run_id"
#: MLflow run ids of earlier jobs that stopped before their first checkpoint, one per line.
EARLIER_RUN_IDS_FILE = "earlier_mlflow_run_ids"
#: Hydra's default job-log format (``hydra/job_logging/default.yaml``).
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def _finished(run_dir: Path) -> bool:
    """``results.json`` records a FINISHED job (an unreadable one counts: it is kept)."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return False
    try:
        status = json.loads(path.read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return True
    return str(status).upper() == "FINISHED"


def used_markers(run_dir: str | os.PathLike) -> list[str]:
    """What in ``run_dir`` is an earlier job's work: ``checkpoints/`` (a complete checkpoint),
    ``results.json`` (of a FINISHED job), with ``mlflow_run_id`` named too when there is work;
    empty for a new folder, or one whose earlier job stopped before its first checkpoint."""
    run_dir = Path(run_dir)
    found = []
    if saved_checkpoints(run_dir / CHECKPOINT_FOLDER):
        found.append(f"{CHECKPOINT_FOLDER}/")
    if _finished(run_dir):
        found.append(RESULTS_FILE)
    if found and (run_dir / RUN_ID_FILE).exists():
        found.insert(len(found) - (RESULTS_FILE in found), RUN_ID_FILE)
    return found


def earlier_job_without_work(run_dir: str | os.PathLike) -> bool:
    """True when an earlier job used ``run_dir`` (its ``mlflow_run_id`` or
    ``run_identity.json``) but stopped before leaving work there (`used_markers` empty)."""
    run_dir = Path(run_dir)
    started = any((run_dir / name).is_file() for name in (RUN_ID_FILE, IDENTITY_FILE))
    return started and not used_markers(run_dir)


def stop_hint(run_dir: str | os.PathLike, training: bool) -> str:
    """What to do after a job in ``run_dir`` was stopped (Ctrl-C, SIGTERM), for its last line.

    Args:
        run_dir: the job's folder.
        training: the job trains (``resume=true`` applies).
    """
    saved = saved_checkpoints(Path(run_dir) / CHECKPOINT_FOLDER)
    if training and saved:
        return (f"resume=true with hydra.run.dir={run_dir} continues from its last checkpoint, "
                f"{saved[-1].name}")
    if training:
        return (f"no checkpoint was written yet: the same command with hydra.run.dir={run_dir} "
                "starts the training over there")
    return "the same command runs it again"


_MAX_STEPS_ITEM = re.compile(r"(?:^|,)training\.max_steps=[^,]*")


def earlier_sweep_job(run_dir: str | os.PathLike) -> Path | None:
    """The job folder of a sweep started before ``training.max_steps`` left the job folder
    names (``conf/hydra/default.yaml``) that holds this job, when ``run_dir`` is new.

    ``<num>_<overrides>``: a sibling ``<num>_<the same overrides + training.max_steps=N>``
    with a checkpoint; None when ``run_dir`` holds anything or there is no such sibling.
    """
    run_dir = Path(run_dir)
    prefix, _, name = run_dir.name.partition("_")
    if (not prefix.isdigit() or used_markers(run_dir) or earlier_job_without_work(run_dir)
            or not run_dir.parent.is_dir()):
        return None
    for sibling in sorted(run_dir.parent.glob(f"{prefix}_*training.max_steps=*")):
        rest = sibling.name[len(prefix) + 1:]
        if (sibling != run_dir and _MAX_STEPS_ITEM.sub("", rest).lstrip(",") == name
                and saved_checkpoints(sibling / CHECKPOINT_FOLDER)):
            return sibling
    return None


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
        self.takes_over = False
        self._buffer: logging.handlers.MemoryHandler | None = None
        self._file_handler: logging.Handler | None = None
        self._lock = contextlib.ExitStack()
        self._locked = False

    # ------------------------------------------------------------------ claim

    def claim(self) -> None:
        """Refuse a busy folder, and a used one without ``resume``; hold log records.

        Holds the folder's lock until `release` / `close`. A folder whose earlier job stopped
        before its first checkpoint is taken over (`takes_over`, a warning).

        Raises:
            RunFolderError: another job runs in the folder, or it holds an earlier job's work
                and ``resume`` is false.
        """
        if self.is_chief and self.path.is_dir() and not self._locked:
            try:
                self._lock.enter_context(exclusive_lock(self.path, wait=False))
                self._locked = True
            except BlockingIOError:
                raise RunFolderError(
                    f"{self.path}: another job is running in this folder right now; wait for "
                    "it to end, or choose another folder (drop hydra.run.dir / "
                    "hydra.sweep.dir, or point it at a new folder)") from None
        if self.is_chief and not self.resume:
            markers = used_markers(self.path)
            if markers:
                self.release()
                raise RunFolderError(refusal(self.path, markers))
        if self.is_chief and self.resume:
            earlier = earlier_sweep_job(self.path)
            if earlier is not None:
                self.release()
                raise RunFolderError(
                    f"resume: {self.path.name} holds no run, but this sweep's job is in "
                    f"{earlier.name} (named with its training.max_steps by an earlier unet3d; "
                    f"job folders are now named without it): rename that folder to "
                    f"{self.path.name} and run the same command again, nothing was changed")
        if self.is_chief and self._buffer is None:
            self._buffer = logging.handlers.MemoryHandler(
                capacity=1_000_000, flushLevel=logging.CRITICAL + 1, target=None,
                flushOnClose=False,
            )
            logging.getLogger().addHandler(self._buffer)
        if self.is_chief and not self.resume and earlier_job_without_work(self.path):
            self.takes_over = True
            earlier = _read_line(self.path / RUN_ID_FILE)
            log.warning("%s: the earlier job there stopped before its first checkpoint%s, so "
                        "the folder holds no work to keep: this job starts anew in it", self.path,
                        f" (its MLflow run {earlier} stays as it ended)" if earlier else "")

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
        if self.takes_over:
            self._set_aside_earlier_job()
        remove_stale_temporaries(self.path)  # metrics/, figures/, predictions/ too
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

    def _set_aside_earlier_job(self) -> None:
        """Move the earlier job's MLflow run id to `EARLIER_RUN_IDS_FILE`, drop its results."""
        earlier = _read_line(self.path / RUN_ID_FILE)
        if earlier:
            known = (self.path / EARLIER_RUN_IDS_FILE)
            lines = known.read_text(encoding="utf-8") if known.is_file() else ""
            write_text_atomic(known, lines + earlier + "\n")
        (self.path / RUN_ID_FILE).unlink(missing_ok=True)
        (self.path / RESULTS_FILE).unlink(missing_ok=True)

    def release(self) -> None:
        """Stop holding log records (a refused or failed job: they are dropped) and the lock."""
        self._drop_buffer()
        self._unlock()

    def close(self) -> None:
        """Detach the log file handler (end of the job in a process that runs several)."""
        self._drop_buffer()
        self._unlock()
        if self._file_handler is not None:
            self._file_handler.flush()
            logging.getLogger().removeHandler(self._file_handler)
            self._file_handler.close()
            self._file_handler = None

    def _unlock(self) -> None:
        self._lock.close()
        self._locked = False

    def _drop_buffer(self) -> None:
        if self._buffer is not None:
            logging.getLogger().removeHandler(self._buffer)
            self._buffer.setTarget(None)
            self._buffer.buffer.clear()
            self._buffer = None


def _read_line(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


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
