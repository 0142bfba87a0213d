"""The store check (unet3d.tracking.store_check) on real faults: a refused port, a real SQLite
store held by another process with BEGIN EXCLUSIVE, corrupted files, a schema revision of a
newer MLflow and a deleted experiment; each is one line naming tracking.uri and what to do."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_port
from unet3d.errors import ConfigError, TrackingStoreError
from unet3d.tracking.store_check import apply_http_budget, check_store, store_problem
from unet3d.tracking.tracker import Tracker


def _section(uri: str, **settings) -> dict:
    return {"enabled": True, "uri": uri, "experiment_name": "unet3d-test", **settings}


def test_a_healthy_store_passes(store_root: Path) -> None:
    uri = f"sqlite:///{store_root / 'mlflow.db'}"
    assert check_store(_section(uri), store_root) == uri


def test_a_refused_port_fails_within_seconds(tmp_path: Path) -> None:
    """MLflow's own budget (7 retries) takes about 4 minutes; the check's takes seconds."""
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingStoreError) as raised:
        check_store(_section(uri, check_retries=2, check_timeout_s=5), tmp_path)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert elapsed < 20, elapsed
    assert message.startswith(f"tracking.uri={uri}: no MLflow tracking server answers "
                              "(connection refused after 2 retries in ")
    assert "tracking.enabled=false" in message and "tracking.check_retries" in message
    assert "\n" not in message
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") != "2"  # the budget is restored
    with pytest.raises(TrackingStoreError, match=r"^tracking.uri=http://127\.0\.0\.1:\d+: no "):
        Tracker(_section(uri, check_retries=0), tmp_path).start(None, tmp_path / "run")
    assert not (tmp_path / "run" / "mlflow_run_id").exists()


def test_a_store_locked_by_another_process(store_root: Path) -> None:
    """Another process holds the SQLite file in an exclusive transaction (BEGIN EXCLUSIVE)."""
    path = store_root / "mlflow.db"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         f"connection = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
         "connection.execute('BEGIN EXCLUSIVE')\n"
         "print('held', flush=True)\n"
         "time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        uri = f"sqlite:///{path}"
        started = time.monotonic()
        with pytest.raises(TrackingStoreError) as raised:
            check_store(_section(uri, lock_wait_s=1), store_root)
        assert time.monotonic() - started < 10
        assert str(raised.value).startswith(
            f"tracking.uri={uri}: the SQLite store {path} is locked by another process "
            "(still after 1 s); wait for it")
        assert "tracking.lock_wait_s" in str(raised.value)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert check_store(_section(f"sqlite:///{path}", lock_wait_s=1), store_root)


@pytest.mark.parametrize(("damage", "symptom"), [
    (lambda data: b"hello, this is no database" * 100, "file is not a database"),
    (lambda data: data[: len(data) // 3], "database disk image is malformed"),
])
def test_a_corrupted_store(store_root: Path, damage, symptom: str) -> None:
    path = store_root / "mlflow.db"
    path.write_bytes(damage(path.read_bytes()))
    uri = f"sqlite:///{path}"
    with pytest.raises(TrackingStoreError) as raised:
        check_store(_section(uri), store_root)
    assert str(raised.value) == (
        f"tracking.uri={uri}: {path} is not a usable SQLite database ({symptom}); restore it "
        f"from a backup, or move it aside (mv {path} {path}.broken) to start a new store: the "
        "run folders under outputs/ keep their checkpoints and results")


def _set_revision(path: Path, revision: str) -> None:
    connection = sqlite3.connect(path)
    connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    connection.commit()
    connection.close()


def test_a_store_of_a_newer_or_older_mlflow(store_root: Path) -> None:
    import mlflow
    from alembic.script import ScriptDirectory

    path = store_root / "mlflow.db"
    uri = f"sqlite:///{path}"
    _set_revision(path, "0123456789ab")
    with pytest.raises(TrackingStoreError) as raised:
        check_store(_section(uri), store_root)
    assert str(raised.value) == (
        f"tracking.uri={uri}: {path} was written by a newer MLflow (its schema revision "
        f"0123456789ab is unknown to MLflow {mlflow.__version__} installed here); upgrade "
        "MLflow (pip install -U mlflow) or point tracking.uri at another store")

    scripts = ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))
    older = list(scripts.walk_revisions())[3].revision
    _set_revision(path, older)
    with pytest.raises(TrackingStoreError, match=rf"written by an older MLflow \(schema "
                                                 rf"revision {older}\); back it up, then "
                                                 rf"upgrade it: mlflow db upgrade {uri}$"):
        check_store(_section(uri), store_root)


def test_a_deleted_experiment_is_one_config_line(store_root: Path, client) -> None:
    experiment_id = client.create_experiment("unet3d-test")
    client.delete_experiment(experiment_id)
    uri = f"sqlite:///{store_root / 'mlflow.db'}"
    line = (f"tracking.experiment_name: experiment 'unet3d-test' (id {experiment_id}) is "
            f"deleted in {uri}; restore it (MLFLOW_TRACKING_URI={uri} mlflow experiments "
            f"restore --experiment-id {experiment_id}) or choose another "
            "tracking.experiment_name")
    with pytest.raises(ConfigError) as raised:
        check_store(_section(uri), store_root)
    assert str(raised.value) == line
    from unet3d.tracking.store import get_or_create_experiment  # a job that passed the check

    with pytest.raises(ConfigError) as raised:
        get_or_create_experiment(client, "unet3d-test", None, uri)
    assert str(raised.value) == line


def test_http_budget_and_later_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    apply_http_budget({"http_max_retries": None, "http_timeout_s": None})
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    apply_http_budget({"http_max_retries": 3, "http_timeout_s": 30})
    assert (os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"],
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]) == ("3", "30")
    from mlflow.exceptions import MlflowException

    uri = "sqlite:////data/mlflow.db"
    locked = MlflowException("(sqlite3.OperationalError) database is locked\n[SQL: SELECT ...]")
    assert store_problem(uri, locked, 36.4).startswith(
        f"{uri}".join(("tracking.uri=", ": the SQLite store /data/mlflow.db is locked by "
                                        "another process (still after 36 s)")))
    other = store_problem("http://h:5000", RuntimeError("boom\nsecond line"))
    assert other == ("tracking.uri=http://h:5000: the store cannot be used (RuntimeError: boom "
                     "second line); check the URI, the server's log or the file, or pass "
                     "tracking.enabled=false")
