"""The MLflow store, checked once before any heavy work: one line when it cannot be used.

``check_store`` runs before a job builds anything (``unet3d.run``) and when a tracker starts a
run (``Tracker.start``, so a sweep's parent run too). A store that is down, locked, corrupted
or written by a newer MLflow, and an experiment that was deleted, end the job with one line
that starts with ``tracking.uri=<uri>:`` (or ``tracking.experiment_name:``), says what is
wrong and what to do (``TrackingStoreError`` / ``ConfigError``: exit status 1, nothing
trained). ``store_problem`` turns an error raised later by MLflow into the same line.

Budgets (``conf/tracking/mlflow.yaml``):

- an ``http(s)://`` server: the check's request is retried ``tracking.check_retries`` times
  with MLflow's exponential backoff (factor 1: waits 0, 2, 4 ... s) and each try waits at most
  ``tracking.check_timeout_s``; a refused port fails in a few seconds instead of MLflow's
  default of 7 retries (about 4 minutes). The job's own calls keep MLflow's budget, or
  ``tracking.http_max_retries`` / ``tracking.http_timeout_s`` when set (they set
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` for the process);
- a ``sqlite:///`` file: the check opens it read-only with Python's ``sqlite3`` and waits at
  most ``tracking.lock_wait_s`` for a lock another process holds (MLflow itself waits 20 s per
  statement, then retries), reads its tables and its schema revision (``alembic_version``),
  which must be one this MLflow knows (else the file was written by a newer MLflow).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from unet3d.errors import ConfigError, TrackingStoreError
from unet3d.tracking.store import deleted_experiment, open_client, resolve_tracking_uri

logger = logging.getLogger(__name__)

#: MLflow's environment variables of its HTTP client, read at every request.
_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_BACKOFF = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
#: Defaults of the check when the ``tracking`` group lacks a key (an older run's config).
_CHECK_DEFAULTS = {"check_retries": 2, "check_timeout_s": 10, "lock_wait_s": 20.0}
#: (URI, experiment name) checked in this process: the runner checks before it builds anything,
#: the job's tracker (and every job of a sweep run in one process) then skips it.
_checked: set[tuple[str, str]] = set()


def check_store(tracking_cfg: Mapping[str, Any] | None, root_dir: str | os.PathLike) -> str:
    """Check that the store answers and holds a usable experiment; return its URI.

    Also sets ``tracking.http_max_retries`` / ``tracking.http_timeout_s`` (when not null) as
    MLflow's environment variables for the rest of the process.

    Args:
        tracking_cfg: the ``tracking`` config section (``uri``, ``experiment_name``, the
            budgets above).
        root_dir: the project root (``paths.root_dir``: the default local store).

    Returns:
        The tracking URI (``resolve_tracking_uri``).

    Raises:
        TrackingStoreError: one line starting ``tracking.uri=<uri>:``: the server does not
            answer, the SQLite file is locked, not a database, malformed or of a newer MLflow.
        ConfigError: the experiment ``tracking.experiment_name`` is deleted.
    """
    section = dict(tracking_cfg or {})
    uri = resolve_tracking_uri(section, root_dir)
    apply_http_budget(section)
    name = str(section.get("experiment_name") or "unet3d")
    if (uri, name) in _checked:
        return uri
    started = time.monotonic()
    path = sqlite_path(uri)
    if path is not None and path.is_file():
        _check_sqlite_file(uri, path, float(_setting(section, "lock_wait_s")))
    try:
        with _check_budget(uri, section):
            experiment = _client(uri).get_experiment_by_name(name)
    except Exception as error:  # noqa: BLE001 - every store error becomes one line
        raise TrackingStoreError(store_problem(uri, error, time.monotonic() - started,
                                               section)) from None
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(deleted_experiment(name, uri, experiment.experiment_id))
    _checked.add((uri, name))
    return uri


def is_store_error(error: BaseException) -> bool:
    """True for an error raised by MLflow's store clients (MLflow, SQLAlchemy, SQLite, HTTP)."""
    module = type(error).__module__.split(".", 1)[0]
    return module in ("mlflow", "sqlalchemy", "sqlite3", "requests", "urllib3", "alembic")


def apply_http_budget(section: Mapping[str, Any]) -> None:
    """Export ``tracking.http_max_retries`` / ``tracking.http_timeout_s`` (when set) for
    MLflow's HTTP client; null keeps MLflow's own (or the environment's) values."""
    for key, variable in (("http_max_retries", _RETRIES), ("http_timeout_s", _TIMEOUT)):
        value = section.get(key)
        if value is not None:
            os.environ[variable] = str(int(value))


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (None for other stores and in-memory SQLite)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri.split("?", 1)[0][len(prefix):]
    return None if not path or path == ":memory:" else Path(path)


def store_problem(uri: str, error: BaseException, waited_s: float | None = None,
                  section: Mapping[str, Any] | None = None) -> str:
    """One line for an error of the store: ``tracking.uri=<uri>: <what is wrong>; <what to do>``.

    Args:
        uri: the tracking URI.
        error: what MLflow (or SQLite, requests) raised.
        waited_s: how long the failed call took (named for a server that does not answer).
        section: the ``tracking`` section (its budget keys are named in the advice).
    """
    text = " ".join(str(error).split())
    lowered = text.lower()
    where = f"tracking.uri={uri}"
    path = sqlite_path(uri)
    if "database is locked" in lowered or "database table is locked" in lowered:
        wait = _setting(section or {}, "lock_wait_s")
        return (f"{where}: the SQLite store {path} is locked by another process (still after "
                f"{waited_s if waited_s is not None else wait:.0f} s); wait for it (another "
                "job, a backup or an sqlite3 shell in a transaction) to finish and rerun, or "
                "raise tracking.lock_wait_s")
    for symptom in ("file is not a database", "database disk image is malformed"):
        if symptom in lowered:
            return (f"{where}: {path} is not a usable SQLite database ({symptom}); restore it "
                    f"from a backup, or move it aside (mv {path} {path}.broken) to start a new "
                    "store: the run folders under outputs/ keep their checkpoints and results")
    revision = _schema_revision(text)
    if revision is not None:
        return _revision_problem(where, uri, path, revision)
    if _is_connection_error(error, lowered):
        retries = _setting(section or {}, "check_retries")
        took = f" after {retries} retries in {waited_s:.0f} s" if waited_s is not None else ""
        return (f"{where}: no MLflow tracking server answers ({_connection_reason(lowered)}"
                f"{took}); start it (mlflow server --host <host> --port <port>), point "
                "tracking.uri (or MLFLOW_TRACKING_URI) at a running one, or pass "
                "tracking.enabled=false to run untracked; tracking.check_retries and "
                "tracking.check_timeout_s set how long this check waits")
    first = text[:300] + ("..." if len(text) > 300 else "")
    return (f"{where}: the store cannot be used ({type(error).__name__}: {first}); check the "
            "URI, the server's log or the file, or pass tracking.enabled=false")


# ---- internals --------------------------------------------------------------------------------


def _setting(section: Mapping[str, Any], key: str) -> Any:
    value = section.get(key)
    return _CHECK_DEFAULTS[key] if value is None else value


def _client(uri: str) -> Any:
    return open_client(uri)


@contextlib.contextmanager
def _check_budget(uri: str, section: Mapping[str, Any]) -> Iterator[None]:
    """MLflow's HTTP retry budget of the check (an ``http(s)://`` store only), then restored.

    MLflow reads these variables at every request (``mlflow.utils.rest_utils``); the check
    runs before the job starts any thread that talks to the store.
    """
    if not uri.lower().startswith(("http://", "https://")):
        yield
        return
    budget = {_RETRIES: str(int(_setting(section, "check_retries"))),
              _TIMEOUT: str(int(_setting(section, "check_timeout_s"))),
              _BACKOFF: "1"}
    saved = {name: os.environ.get(name) for name in budget}
    os.environ.update(budget)
    logger.info("MLflow: checking the tracking server %s (up to %s retries, %s s per try)", uri,
                budget[_RETRIES], budget[_TIMEOUT])
    pool_logger = logging.getLogger("urllib3.connectionpool")
    pool_level = pool_logger.level
    pool_logger.setLevel(logging.ERROR)  # its per-retry warnings: the check's line says it all
    try:
        yield
    finally:
        pool_logger.setLevel(pool_level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_sqlite_file(uri: str, path: Path, lock_wait_s: float) -> None:
    """Open the file read-only, wait at most ``lock_wait_s`` for a lock, read its tables and
    its schema revision."""
    started = time.monotonic()
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=lock_wait_s)
    except sqlite3.Error as error:
        raise TrackingStoreError(store_problem(uri, error)) from None
    try:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        revision = None
        if "alembic_version" in tables:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
    except sqlite3.Error as error:
        raise TrackingStoreError(
            store_problem(uri, error, time.monotonic() - started, {"lock_wait_s": lock_wait_s})
        ) from None
    finally:
        connection.close()
    if revision is not None and not _known_revision(revision):
        raise TrackingStoreError(_revision_problem(f"tracking.uri={uri}", uri, path, revision))


def _known_revision(revision: str) -> bool:
    """True when this MLflow's migrations (``mlflow/store/db_migrations``) know ``revision``."""
    import mlflow
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    scripts = ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))
    try:
        return scripts.get_revision(revision) is not None
    except (CommandError, KeyError, ValueError):
        return False


def _schema_revision(text: str) -> str | None:
    """The store's revision in MLflow's "out-of-date database schema (found version X, ..."."""
    import re

    found = re.search(r"found version (\w+)", text)
    return found[1] if found and "schema" in text.lower() else None


def _revision_problem(where: str, uri: str, path: Path | None, revision: str) -> str:
    import mlflow

    store = path if path is not None else uri
    if _known_revision(revision):
        return (f"{where}: {store} was written by an older MLflow (schema revision "
                f"{revision}); back it up, then upgrade it: mlflow db upgrade {uri}")
    return (f"{where}: {store} was written by a newer MLflow (its schema revision {revision} "
            f"is unknown to MLflow {mlflow.__version__} installed here); upgrade MLflow "
            "(pip install -U mlflow) or point tracking.uri at another store")


def _is_connection_error(error: BaseException, lowered: str) -> bool:
    try:
        import requests

        if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - MLflow depends on requests
        pass
    return any(text in lowered for text in (
        "max retries exceeded", "connection refused", "failed to establish a new connection",
        "name or service not known", "timed out", "temporary failure in name resolution"))


def _connection_reason(lowered: str) -> str:
    for text, reason in (("connection refused", "connection refused"),
                         ("timed out", "timed out"),
                         ("name or service not known", "unknown host"),
                         ("temporary failure in name resolution", "unknown host")):
        if text in lowered:
            return reason
    return "no connection"
