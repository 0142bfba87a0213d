"""No Optuna trial left RUNNING: who runs a trial, FAIL on a stop, FAIL when its process is gone.

Hydra's Optuna sweeper asks the study for trials (``study.ask``), launches their jobs and tells
the results (``study.tell``); a KeyboardInterrupt or SIGTERM between the two, or a SIGKILL,
leaves the trial RUNNING for ever (``study.optimize`` tells such a trial FAIL, the ask/tell loop
of hydra-optuna-sweeper 1.3 does not; see optuna/optuna#485), and TPE counts it as pending. So:

- The sweep process is the trial's *owner*: ``<sweep dir>/optuna_study.json`` records its pid,
  host and process start time (:func:`this_process`), and each job, when it starts, writes that
  owner and its run folder into the user attributes of its trial and of the other trials its
  batch asked for (:func:`claim_trials`; ``unet3d.owner``, ``unet3d.job_dir``).
- On SIGINT / SIGTERM the sweep process tells its RUNNING trials FAIL (:func:`fail_own_trials`),
  with the reason in ``unet3d.fail_reason``.
- When a study sweep starts, RUNNING trials whose owner process is gone (on this host: no such
  pid, or the pid now belongs to another process) are told FAIL with a WARNING naming them
  (:func:`fail_orphaned_trials`). A RUNNING trial of another host, or without an owner record
  (an older unet3d, another program), cannot be checked and is left as it is, with a warning
  saying how to mark it.

Optuna is imported by the functions that need it (:func:`unet3d.tracking.study.require_optuna`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet3d.tracking.study import StudySettings, require_optuna

logger = logging.getLogger(__name__)

#: User attribute of a trial: the sweep process that asked for it (``{pid, host, started}``).
OWNER_ATTR = "unet3d.owner"
#: User attribute of a trial: the run folder of its job.
JOB_DIR_ATTR = "unet3d.job_dir"
#: User attribute of a trial told FAIL here: why.
REASON_ATTR = "unet3d.fail_reason"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, ``/proc/<pid>/stat`` field
    22), which tells a reused pid apart; None where it cannot be read (not Linux, gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces and ")"
    return fields[19] if len(fields) > 19 else None


def this_process() -> dict[str, Any]:
    """The owner record of this process: ``{"pid", "host", "started"}``."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": _start_time(pid)}


def process_alive(owner: Mapping[str, Any]) -> bool | None:
    """Whether the owner process still runs: None when it is on another host (or the record
    is unreadable), so it cannot be checked from here."""
    try:
        pid = int(owner["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    if owner.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = owner.get("started")
    return not (started and _start_time(pid) not in (None, started))


def _same_owner(record: Any, owner: Mapping[str, Any]) -> bool:
    return isinstance(record, Mapping) and all(
        record.get(key) == owner.get(key) for key in ("pid", "host", "started"))


def _storage(settings: StudySettings) -> tuple[Any, Any, int] | None:
    """``(optuna, storage, study_id)``; None for an in-memory study or one not created yet."""
    if settings.storage is None:
        return None
    optuna = require_optuna()
    storage = optuna.storages.get_storage(settings.storage)
    try:
        return optuna, storage, storage.get_study_id_from_name(settings.study_name)
    except KeyError:
        return None


def _running(optuna: Any, storage: Any, study_id: int) -> list[Any]:
    return list(storage.get_all_trials(study_id, deepcopy=False,
                                       states=(optuna.trial.TrialState.RUNNING,)))


def _tell_fail(optuna: Any, storage: Any, study_id: int, settings: StudySettings,
               numbers: Iterable[int], reason: str) -> list[int]:
    """Tell each trial FAIL (``study.tell``, as ``study.optimize`` does), with ``reason``."""
    study = optuna.load_study(study_name=settings.study_name, storage=storage)
    failed = []
    for number in numbers:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        try:
            storage.set_trial_user_attr(trial_id, REASON_ATTR, reason)
            study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        except (RuntimeError, ValueError) as error:  # finished meanwhile (UpdateFinishedTrial)
            logger.debug("trial %d not told FAIL: %s", number, error)
            continue
        failed.append(number)
    return failed


def claim_trials(settings: StudySettings, owner: Mapping[str, Any], numbers: Iterable[int],
                 job_trial: int | None = None, job_dir: str | None = None) -> list[int]:
    """Record ``owner`` on the RUNNING trials of ``numbers`` that have no owner yet.

    Args:
        settings: the study.
        owner: the sweep process (:func:`this_process` of the sweep, from optuna_study.json).
        numbers: the trials this invocation may have asked for (its first trial up to the
            end of the current batch).
        job_trial: the trial of the job that calls this; it also gets ``job_dir``.
        job_dir: the job's run folder.

    Returns:
        The trial numbers that got the owner record.
    """
    opened = _storage(settings)
    if opened is None:
        return []
    optuna, storage, study_id = opened
    wanted = set(numbers)
    claimed = []
    for trial in _running(optuna, storage, study_id):
        if trial.number not in wanted:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if OWNER_ATTR not in trial.user_attrs:
            storage.set_trial_user_attr(trial_id, OWNER_ATTR, dict(owner))
            claimed.append(trial.number)
        if trial.number == job_trial and job_dir:
            storage.set_trial_user_attr(trial_id, JOB_DIR_ATTR, str(job_dir))
    return claimed


def fail_own_trials(settings: StudySettings, owner: Mapping[str, Any], first_trial: int,
                    reason: str) -> list[tuple[int, str | None]]:
    """Tell FAIL the RUNNING trials this sweep process asked for (after SIGINT / SIGTERM).

    Those with ``owner`` as their owner, and those without an owner record numbered from
    ``first_trial`` on (asked for by this invocation's batch, their jobs not started).

    Returns:
        ``(number, job dir or None)`` of each trial told FAIL.
    """
    opened = _storage(settings)
    if opened is None:
        return []
    optuna, storage, study_id = opened
    mine = {trial.number: trial.user_attrs.get(JOB_DIR_ATTR)
            for trial in _running(optuna, storage, study_id)
            if _same_owner(trial.user_attrs.get(OWNER_ATTR), owner)
            or (OWNER_ATTR not in trial.user_attrs and trial.number >= first_trial)}
    failed = _tell_fail(optuna, storage, study_id, settings, sorted(mine), reason)
    return [(number, mine[number]) for number in failed]


@dataclass
class Recovery:
    """What :func:`fail_orphaned_trials` found among the RUNNING trials of a study."""

    failed: list[tuple[int, str | None]] = field(default_factory=list)
    elsewhere: list[tuple[int, str]] = field(default_factory=list)
    unowned: list[int] = field(default_factory=list)


def fail_orphaned_trials(settings: StudySettings) -> Recovery:
    """Tell FAIL the RUNNING trials whose owner process is gone; log what was found.

    One WARNING names the trials told FAIL (and their owner), one names those that cannot be
    checked (another host, no owner record) with the line that marks one FAIL by hand.

    Returns:
        The trials told FAIL (``(number, job dir)``), those of other hosts and those without
        an owner record.
    """
    found = Recovery()
    opened = _storage(settings)
    if opened is None:
        return found
    optuna, storage, study_id = opened
    gone: dict[int, tuple[str, str | None]] = {}
    for trial in _running(optuna, storage, study_id):
        owner = trial.user_attrs.get(OWNER_ATTR)
        alive = process_alive(owner) if isinstance(owner, Mapping) else None
        if alive is False:
            gone[trial.number] = (f"pid {owner.get('pid')} on {owner.get('host')}",
                                  trial.user_attrs.get(JOB_DIR_ATTR))
        elif isinstance(owner, Mapping) and alive is None:
            found.elsewhere.append((trial.number, str(owner.get("host"))))
        elif not isinstance(owner, Mapping):
            found.unowned.append(trial.number)
    reason = "its sweep process was gone when the study was resumed (killed, or its host " \
             "went down)"
    for number in _tell_fail(optuna, storage, study_id, settings, sorted(gone), reason):
        found.failed.append((number, gone[number][1]))
    if found.failed:
        logger.warning(
            "Optuna study %s: trial(s) %s were RUNNING but their sweep process is gone (%s): "
            "marked FAIL", settings.key, ", ".join(str(number) for number, _ in found.failed),
            "; ".join(sorted({gone[number][0] for number, _ in found.failed})))
    unchecked = [f"{number} (host {host})" for number, host in found.elsewhere] + [
        f"{number} (no owner record)" for number in found.unowned]
    if unchecked:
        logger.warning(
            "Optuna study %s: trial(s) %s are RUNNING and cannot be checked from here; if no "
            "process runs them, mark one FAIL with: python -c \"import optuna; optuna.load_study("
            "study_name='%s', storage='%s').tell(<number>, optuna.trial.TrialState.FAIL)\"",
            settings.key, ", ".join(unchecked), settings.study_name, settings.storage)
    return found




def end_runs_killed(client: Any, run_ids: Iterable[str | None], reason: str) -> list[str]:
    """End the RUNNING MLflow runs of ``run_ids`` and their RUNNING child runs KILLED.

    Args:
        client: an ``mlflow.MlflowClient``.
        run_ids: the runs (None entries are skipped); a run that is gone is skipped.
        reason: recorded as tag ``error``.

    Returns:
        The ids of the runs ended here.
    """
    from mlflow.exceptions import MlflowException

    ended = []
    for run_id in dict.fromkeys(run_id for run_id in run_ids if run_id):
        try:
            run = client.get_run(run_id)
            children = client.search_runs(
                [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}' "
                "and attributes.status = 'RUNNING'", max_results=1000)
            for candidate in [*children, run]:
                if candidate.info.status == "RUNNING":
                    client.set_tag(candidate.info.run_id, "error", reason)
                    client.set_terminated(candidate.info.run_id, "KILLED")
                    ended.append(candidate.info.run_id)
        except MlflowException as error:
            logger.warning("MLflow run %s of a failed trial not ended: %s", run_id, error)
    return ended




#: The trial run of a job folder that its own ``mlflow_run_id`` does not name (a
#: cross_validate job's: the parent run of its fold sweep), or None.
RunIdOf = Callable[[str], str | None]


def _run_ids(trials: list[tuple[int, str | None]], run_id_of: RunIdOf) -> list[str | None]:
    from unet3d.tracking.tracker import read_run_id_file

    return [run_id for _, job_dir in trials if job_dir
            for run_id in (read_run_id_file(Path(job_dir) / "mlflow_run_id"), run_id_of(job_dir))]


class StudyOwner:
    """The sweep process's side of a study: recovery at start, FAIL on a stop.

    Args:
        settings: the study; owner: this process (:func:`this_process`); first_trial: the
            number of trials the study had before this invocation.
        recovered: what :func:`fail_orphaned_trials` found at start.
    """

    def __init__(self, settings: StudySettings, owner: dict[str, Any], first_trial: int,
                 recovered: Recovery) -> None:
        self.settings, self.owner, self.first_trial = settings, owner, first_trial
        self.recovered = recovered

    @classmethod
    def open(cls, config: Any, sweep_dir: Path) -> StudyOwner:
        """Fail the orphaned trials, then :func:`~unet3d.tracking.study.prepare_study` with
        this process as owner (call with ``${hydra:...}`` resolvable)."""
        from unet3d.tracking.study import prepare_study, study_settings

        settings, owner = study_settings(config), this_process()
        recovered = fail_orphaned_trials(settings)
        return cls(settings, owner, prepare_study(config, sweep_dir, owner), recovered)

    def end_recovered_runs(self, tracker: Any, run_id_of: RunIdOf) -> None:
        """End the MLflow runs of the trials failed at start KILLED."""
        if self.recovered.failed and tracker is not None and tracker.active:
            end_runs_killed(tracker.client, _run_ids(self.recovered.failed, run_id_of),
                            "its Optuna trial's sweep process was gone when the study was "
                            "resumed")

    def stop(self, reason: str, tracker: Any, run_id_of: RunIdOf) -> list[str]:
        """After SIGINT / SIGTERM: this process's RUNNING trials FAIL, their runs KILLED."""
        failed = fail_own_trials(self.settings, self.owner, self.first_trial, reason)
        if not failed:
            return []
        if tracker is not None and tracker.active:
            end_runs_killed(tracker.client, _run_ids(failed, run_id_of), reason)
        return ["Optuna trial(s) " + ", ".join(str(number) for number, _ in failed)
                + " marked FAIL"]


def stop_sweep(study: StudyOwner | None, tracker: Any, reason: str,
               run_id_of: RunIdOf) -> str | None:
    """What a sweep process does on SIGINT / SIGTERM (``unet3d.runtime.signals.on_stop``): the
    study's RUNNING trials of this process FAIL and their MLflow runs KILLED, the sweep's parent
    run KILLED. Returns what was done, for the sweep's one ERROR line (None: nothing)."""
    done = study.stop(reason, tracker, run_id_of) if study is not None else []
    if tracker is not None and tracker.running:
        run_id = tracker.run_id
        tracker.end("KILLED", reason)
        done.append(f"MLflow run {run_id} KILLED")
    if study is not None:
        done.append(f"rerun the same command to resume study {study.settings.key}")
    return "; ".join(done) or None


def claim_for_job(config: Any) -> None:
    """A study job's start (``on_job_start``): record the sweep process (``optuna_study.json``)
    as owner of its trial and of the rest of its batch, and its run folder. Never raises: a
    failure only loses the record (a warning)."""
    from omegaconf import OmegaConf

    from unet3d.tracking.parent_run import hydra_config_set, sweep_dir_of
    from unet3d.tracking.study import read_study_record, study_settings

    try:
        with hydra_config_set(config):
            settings = study_settings(config)
            record = read_study_record(sweep_dir_of(config))
            job_num = int(OmegaConf.select(config, "hydra.job.num", default=0))
            batch = int(OmegaConf.select(config, "hydra.sweeper.n_jobs", default=1) or 1)
            job_dir = str(OmegaConf.select(config, "hydra.runtime.output_dir"))
        if record is None or not record.get("owner"):
            return
        first = int(record["first_trial"])
        claim_trials(settings, record["owner"], range(first, first + job_num + batch),
                     first + job_num, job_dir)
    except Exception as error:  # noqa: BLE001 - the trial runs anyway; only the record is lost
        logger.warning("Could not record the owner of this Optuna trial: %s", error)


__all__ = [
    "JOB_DIR_ATTR",
    "OWNER_ATTR",
    "REASON_ATTR",
    "Recovery",
    "StudyOwner",
    "claim_for_job",
    "claim_trials",
    "end_runs_killed",
    "fail_orphaned_trials",
    "fail_own_trials",
    "process_alive",
    "stop_sweep",
    "this_process",
]
