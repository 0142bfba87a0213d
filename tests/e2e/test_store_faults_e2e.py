"""A tracking store that cannot be used stops the real runner before any heavy work: one ERROR
line naming tracking.uri and what to do, exit status 1, no traceback, nothing trained; a
refused port within seconds, for a job and for a sweep, and a SQLite store held by another
process with BEGIN EXCLUSIVE."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import run_cli
from tests.ports import free_port

pytestmark = pytest.mark.slow

FAST = ("debug=fast", "num_folds=2", "training.max_steps=2")


def _one_error_line(completed: subprocess.CompletedProcess, start: str) -> str:
    """The one line naming the store (a job logs it at ERROR; a sweep's process logs in
    Hydra's format, without the level), and nothing else that looks like a failure."""
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "Retrying" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if "tracking.uri=" in line]
    assert len(lines) == 1, lines
    assert start in lines[0], lines[0]
    assert [line for line in output.splitlines() if "ERROR" in line] in ([], lines), output
    return lines[0]


def test_a_refused_port_fails_in_seconds_for_a_job_and_a_sweep(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    job = run_cli(*FAST, f"tracking.uri={uri}", cwd=tmp_path, timeout=300)
    elapsed = time.monotonic() - started
    line = _one_error_line(job, f"tracking.uri={uri}: no MLflow tracking server answers "
                                "(connection refused after 2 retries in ")
    assert "tracking.check_retries" in line
    assert elapsed < 90, elapsed  # MLflow's own budget: about 4 minutes (process start included)
    assert not list(tmp_path.glob("outputs/**/checkpoints"))
    assert not list(tmp_path.glob("data/**/*.tfrecord*"))  # nothing built, nothing trained

    sweep = run_cli("--multirun", *FAST, "fold=0,1", f"tracking.uri={uri}", cwd=tmp_path,
                    timeout=300)
    _one_error_line(sweep, f"tracking.uri={uri}: no MLflow tracking server answers")
    assert not list(tmp_path.glob("multirun/**/checkpoints"))


def test_a_store_locked_by_another_process_is_one_line(tmp_path: Path) -> None:
    import mlflow

    store = tmp_path / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}").search_experiments()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, time\n"
         f"connection = sqlite3.connect({str(store)!r}, isolation_level=None)\n"
         "connection.execute('BEGIN EXCLUSIVE')\n"
         "print('held', flush=True)\n"
         "time.sleep(300)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        job = run_cli(*FAST, "tracking.lock_wait_s=2", cwd=tmp_path, timeout=300)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    _one_error_line(job, f"tracking.uri=sqlite:///{store}: the SQLite store {store} is locked "
                         "by another process (still after 2 s)")
    assert not list(tmp_path.glob("outputs/**/checkpoints"))
