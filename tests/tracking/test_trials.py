"""No Optuna trial left RUNNING (unet3d.tracking.trials) on a real SQLite study: owner records,
FAIL on a stop, FAIL at start when the owner process is gone (issue 30, item 7)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from unet3d.tracking.study import StudySettings
from unet3d.tracking.trials import (
    JOB_DIR_ATTR,
    OWNER_ATTR,
    REASON_ATTR,
    claim_trials,
    end_runs_killed,
    fail_orphaned_trials,
    fail_own_trials,
    process_alive,
    this_process,
)

optuna = pytest.importorskip("optuna")


def _dead_owner() -> dict:
    """The owner record of a process that has ended (its pid is free now)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return {"pid": child.pid, "host": socket.gethostname(), "started": "1"}


@pytest.fixture()
def study(tmp_path: Path):
    settings = StudySettings("s", f"sqlite:///{tmp_path / 'optuna.db'}")
    created = optuna.create_study(study_name="s", storage=settings.storage)
    return settings, created


def _states(study) -> list[str]:
    return [trial.state.name for trial in study.get_trials()]


def test_process_alive_tells_this_a_dead_and_another_hosts_process_apart() -> None:
    me = this_process()
    assert me["pid"] > 0 and me["host"] == socket.gethostname()
    assert process_alive(me) is True
    assert process_alive(_dead_owner()) is False
    assert process_alive({**me, "started": "0"}) is False  # the pid now runs another process
    assert process_alive({**me, "host": "elsewhere"}) is None
    assert process_alive({"host": "x"}) is None


def test_a_stop_fails_the_trials_of_this_process_and_its_unlaunched_ones(study) -> None:
    settings, created = study
    done = created.ask()
    created.tell(done, 1.0)
    earlier = created.ask()  # RUNNING, of another (live) invocation: left alone
    claim_trials(settings, {**this_process(), "pid": 1}, [earlier.number])
    running, unlaunched = created.ask(), created.ask()
    me = this_process()
    assert claim_trials(settings, me, range(2, 4), job_trial=2, job_dir="/runs/job2") == [2, 3]
    assert claim_trials(settings, me, range(2, 4)) == []  # claimed once
    # an unowned trial from this invocation on (first trial 2) is this process's too
    extra = created.ask()
    failed = fail_own_trials(settings, me, 2, "stopped by SIGINT")
    assert failed == [(running.number, "/runs/job2"), (unlaunched.number, None),
                      (extra.number, None)]
    assert _states(created) == ["COMPLETE", "RUNNING", "FAIL", "FAIL", "FAIL"]
    trial = created.get_trials()[2]
    assert trial.user_attrs[REASON_ATTR] == "stopped by SIGINT"
    assert trial.user_attrs[OWNER_ATTR] == me and trial.user_attrs[JOB_DIR_ATTR] == "/runs/job2"


def test_at_start_trials_of_a_gone_process_fail_with_one_warning(study, caplog) -> None:
    settings, created = study
    orphan, foreign, unowned, alive = (created.ask() for _ in range(4))
    claim_trials(settings, _dead_owner(), [orphan.number], orphan.number, "/runs/job0")
    claim_trials(settings, {**this_process(), "host": "node7"}, [foreign.number])
    claim_trials(settings, this_process(), [alive.number])
    with caplog.at_level(logging.WARNING, logger="unet3d.tracking.trials"):
        found = fail_orphaned_trials(settings)
    assert found.failed == [(0, "/runs/job0")] and found.elsewhere == [(1, "node7")]
    assert found.unowned == [2]
    assert _states(created) == ["FAIL", "RUNNING", "RUNNING", "RUNNING"]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].startswith("Optuna study s@sqlite:") and "trial(s) 0 were RUNNING" \
        in warnings[0] and "marked FAIL" in warnings[0]
    assert "1 (host node7), 2 (no owner record)" in warnings[1] and ".tell(<number>" in warnings[1]
    assert "sweep process was gone" in created.get_trials()[0].user_attrs[REASON_ATTR]
    assert fail_orphaned_trials(StudySettings("missing", settings.storage)).failed == []
    assert fail_orphaned_trials(StudySettings("s", None)).failed == []


def test_the_runs_of_a_failed_trial_end_killed(client, store_root: Path) -> None:
    experiment = client.create_experiment("e", artifact_location=str(store_root / "artifacts"))
    trial = client.create_run(experiment).info.run_id
    fold = client.create_run(experiment, tags={"mlflow.parentRunId": trial}).info.run_id
    done = client.create_run(experiment, tags={"mlflow.parentRunId": trial}).info.run_id
    client.set_terminated(done, "FINISHED")
    assert sorted(end_runs_killed(client, [trial, None, "0" * 32], "gone")) == sorted(
        [trial, fold])
    assert [client.get_run(run).info.status for run in (trial, fold, done)] == [
        "KILLED", "KILLED", "FINISHED"]
    assert client.get_run(fold).data.tags["error"] == "gone"
