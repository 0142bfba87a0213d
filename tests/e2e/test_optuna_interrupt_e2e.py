"""An interrupted Optuna study leaves no trial RUNNING (issue 30, item 7), in real processes.

A real study sweep (``hparams_search=unet3d_optuna``, a real SQLite study, ``debug=fast``, one
fold per trial) is stopped while its trial trains: Ctrl-C to the process group (as a terminal
sends it) gives one ERROR line, exit 130, the trial FAIL and its MLflow runs KILLED; a SIGKILL
of the sweep process leaves the trial RUNNING, and the next start of the study marks it FAIL
with a WARNING naming it, then runs its own trial to the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, mlflow_client

pytestmark = pytest.mark.slow
optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

STUDY = "interrupted"
#: One fold of two per trial, the smallest shapes; "hparams_search" is listed in the defaults
#: of conf/config.yaml or added with "+" (see test_optuna_e2e._search_group).
COMMON = ("debug=fast", "num_folds=2", "mode.folds=[0]", "data.crop_size=[32,32,32]",
          "model.base_filters=4", f"hydra.sweeper.study_name={STUDY}",
          "hydra.sweeper.n_trials=1")


def _search_group() -> str:
    from tests.e2e.test_optuna_e2e import _search_group as group

    return group()


class Sweep:
    """``python -m unet3d.run --multirun hparams_search=...`` in its own process group."""

    LOGS = "outputs/multirun/*/*/*/folds/fold*/run.log"

    def __init__(self, cwd: Path, name: str, *extra: str) -> None:
        self.log = cwd / f"{name}.log"
        self.earlier = set(cwd.glob(self.LOGS))  # the fold logs of earlier sweeps
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
        environment.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "w") as stream:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "unet3d.run", "--multirun", _search_group(), *COMMON,
                 *extra], cwd=cwd, env=environment, stdout=stream, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.cwd = cwd

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for_training(self, timeout: float = 600) -> None:
        """Until a fold of this sweep's trial has logged a training step."""
        deadline = time.monotonic() + timeout
        while True:
            logs = set(self.cwd.glob(self.LOGS)) - self.earlier
            if any(" step " in path.read_text() for path in logs):
                return
            assert self.process.poll() is None, self.output[-4000:]
            assert time.monotonic() < deadline, self.output[-4000:]
            time.sleep(0.5)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def survivors(self, timeout: float) -> list[str]:
        """The command lines of this sweep's process group still alive after ``timeout`` s.

        Helpers end a moment after the process that started them (the standard library's
        ``multiprocessing`` resource tracker exits when its last user has gone), so the group
        is given ``timeout`` seconds; a process that outlives them is a leak.
        """
        deadline = time.monotonic() + timeout
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not self.group_alive():
            return []
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:  # fields: state, ppid, pgrp, ...
                    found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                                 .decode(errors="replace"))
            except (OSError, IndexError, ValueError):
                continue
        return found or ["(a process of the group, gone before it could be named)"]


def _study(cwd: Path):
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{cwd / 'optuna.db'}")


def _runs(cwd: Path) -> dict[str, object]:
    client = mlflow_client(cwd)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return {run.info.run_name: run for run in client.search_runs(experiments, max_results=100)}


def test_ctrl_c_and_sigkill_of_a_study_leave_no_trial_running(tmp_path: Path) -> None:
    # 1. Ctrl-C while trial 0 trains: the whole process group gets SIGINT, as from a terminal.
    first = Sweep(tmp_path, "first", "training.max_steps=100000")
    first.wait_for_training()
    os.killpg(first.process.pid, signal.SIGINT)
    assert first.process.wait(timeout=300) == 130, first.output[-4000:]
    output = first.output
    errors = [line for line in output.splitlines() if "][ERROR] - " in line]
    assert len(errors) == 1, "\n".join(errors) + "\n---\n" + output[-4000:]
    assert "Traceback" not in output, output[-6000:]
    assert "sweep stopped: interrupted (Ctrl-C); Optuna trial(s) 0 marked FAIL" in errors[0]
    assert f"rerun the same command to resume study {STUDY}@" in errors[0]
    (trial,) = _study(tmp_path).get_trials()
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["unet3d.fail_reason"] == "stopped by SIGINT"
    assert trial.user_attrs["unet3d.owner"]["pid"] == first.process.pid
    runs = _runs(tmp_path)
    assert {name: run.info.status for name, run in runs.items()} == {
        f"optuna-{STUDY}": "KILLED", "trial-0": "KILLED", "train_and_evaluate-fold0": "KILLED"}
    assert not (left := first.survivors(timeout=30)), left

    # 2. SIGKILL of the sweep process alone while trial 1 trains: Optuna keeps it RUNNING; its
    #    fold sweep gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and ends its runs KILLED.
    second = Sweep(tmp_path, "second", "training.max_steps=100000")
    second.wait_for_training()
    second.process.kill()
    assert second.process.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 180
    while second.group_alive():
        assert time.monotonic() < deadline, "the fold sweep outlived its killed parent"
        time.sleep(0.5)
    assert [t.state.name for t in _study(tmp_path).get_trials()] == ["FAIL", "RUNNING"]
    assert _runs(tmp_path)["trial-1"].info.status == "KILLED"

    # 3. The next start marks trial 1 FAIL with a WARNING naming it, then runs trial 2 through.
    third = Sweep(tmp_path, "third", "training.max_steps=2")
    assert third.process.wait(timeout=600) == 0, third.output[-4000:]
    # (logged by the sweep process before Hydra sets up job logging: no level name shown)
    warnings = [line for line in third.output.splitlines() if "trial(s) 1 were RUNNING" in line]
    assert len(warnings) == 1, third.output[-4000:]
    assert f"pid {second.process.pid} on " in warnings[0] and "marked FAIL" in warnings[0]
    trials = _study(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE"]
    assert "sweep process was gone" in trials[1].user_attrs["unet3d.fail_reason"]
    study_run = _runs(tmp_path)[f"optuna-{STUDY}"]
    assert study_run.info.status == "FINISHED"
    assert study_run.data.metrics["optuna/trials_fail"] == 2.0
    assert "optuna/trials_running" not in study_run.data.metrics
    assert "Trials: COMPLETE 1, FAIL 2." in third.output
