"""The MLflow store: where it is, and safe access to it from parallel jobs.

Store: `tracking.uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///<root_dir>/mlflow.db` with
artifacts under `<root_dir>/mlartifacts`, so `mlflow ui` started in the root dir shows
everything (`mlflow ui --backend-store-uri sqlite:///mlflow.db` on MLflow < 3.7).

Parallel jobs (joblib launcher, several ranks of a sweep) share one SQLite file: opening a new
store is serialised with a file lock (`sqlite_store_lock`) and every call is retried while
SQLite reports a lock (`retry`). MLflow is imported lazily.

Experiment kind: MLflow 3 opens an experiment without the tag `mlflow.experimentKind` on its
GenAI overview page (traces, token usage); unet3d's experiment is created, and an existing one
marked, as `custom_model_development` (a model-training experiment: the UI opens on its runs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_RETRYABLE_MESSAGES = ("database is locked", "database table is locked")

#: The experiment tag that tells MLflow's UI what kind of experiment it is (MLflow >= 3.x).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: MLflow's kind of a model-training experiment: the UI opens on its runs and charts.
EXPERIMENT_KIND = "custom_model_development"

_T = TypeVar("_T")


def resolve_tracking_uri(
    tracking_cfg: Mapping[str, Any] | None, root_dir: str | os.PathLike
) -> str:
    """Return the tracking URI: `tracking.uri`, else `$MLFLOW_TRACKING_URI`, else local SQLite.

    Args:
        tracking_cfg: the `tracking` config section (key `uri`), or None when absent.
        root_dir: the project root (`paths.root_dir`) holding the local store.

    Returns:
        The URI; the local default is `sqlite:///<absolute root_dir>/mlflow.db`.
    """
    uri = tracking_cfg.get("uri") if tracking_cfg is not None else None
    if uri:
        return str(uri)
    environment_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if environment_uri:
        return environment_uri
    return f"sqlite:///{Path(root_dir).resolve() / 'mlflow.db'}"


def resolve_artifact_location(
    tracking_cfg: Mapping[str, Any] | None, root_dir: str | os.PathLike, tracking_uri: str
) -> str | None:
    """Return the artifact location for a new experiment, or None to let the server decide.

    Args:
        tracking_cfg: the `tracking` config section (key `artifact_location`), or None.
        root_dir: the project root (`paths.root_dir`).
        tracking_uri: the store's URI (`resolve_tracking_uri`).

    Returns:
        `tracking.artifact_location` (a plain path becomes a file URI); otherwise
        `<root_dir>/mlartifacts` as a file URI for a local store (`sqlite:`, `file:` or a
        path), and None for a server (`http(s)://`, `databricks`: `mlflow server
        --serve-artifacts` then proxies artifacts).
    """
    location = tracking_cfg.get("artifact_location") if tracking_cfg is not None else None
    if location:
        location = str(location)
        if "://" not in location and not location.startswith("file:"):
            return Path(location).resolve().as_uri()
        return location
    if is_local_store(tracking_uri):
        return (Path(root_dir).resolve() / "mlartifacts").as_uri()
    return None


def is_local_store(uri: str) -> bool:
    """True for a store in local files (`sqlite:`, `file:` or a plain path), False for a server."""
    scheme = uri.split(":", 1)[0].lower() if "://" in uri or uri.startswith("sqlite:") else ""
    return scheme in ("", "sqlite", "file")


@contextlib.contextmanager
def sqlite_store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on the folder of a `sqlite:///` store (no-op for other stores).

    MLflow creates the tables of a new SQLite store (and migrates an old one) when a client
    opens it; two processes doing it at once (parallel jobs on a fresh store) fail with "duplicate
    column" / "table already exists" errors.

    Args:
        uri: the tracking URI.
    """
    from unet3d.runs.files import exclusive_lock

    prefix = "sqlite:///"
    path = uri.split("?", 1)[0][len(prefix):] if uri.startswith(prefix) else ""
    if not path or path == ":memory:":
        yield
        return
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    # Re-entrant in this process: the store's folder may be the job's own run folder, which
    # the job already holds (unet3d.runs.folder).
    with exclusive_lock(folder, what="opening the MLflow store"):
        yield


def retry(operation: Callable[[], _T], description: str, attempts: int = 6,
          also: tuple[str, ...] = ()) -> _T:
    """Run `operation`, retrying when SQLite reports a lock (parallel jobs on one store).

    Args:
        operation: the store call, without arguments.
        description: what it does, for the debug log.
        attempts: tries in all; the waits between them double from 0.2 s up to 3 s.
        also: further (lower-case) parts of error messages worth another try, e.g. a row that
            a parallel job inserted between MLflow's check and its insert.

    Returns:
        What `operation` returns.

    Raises:
        Exception: the operation's error when it is not a lock, or on the last attempt.
    """
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as error:
            message = str(error).lower()
            if attempt == attempts or not any(text in message
                                              for text in (*_RETRYABLE_MESSAGES, *also)):
                raise
            logger.debug("%s: store locked (attempt %d), retrying: %s", description, attempt, error)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
    raise AssertionError("unreachable")  # pragma: no cover


def open_client(tracking_uri: str) -> Any:
    """Return an `mlflow.MlflowClient` for `tracking_uri`, creating a SQLite store safely.

    Opening a SQLite store creates (or migrates) its tables: one process at a time.
    """
    from mlflow import MlflowClient

    with sqlite_store_lock(tracking_uri):
        return retry(lambda: MlflowClient(tracking_uri=tracking_uri), "open store")


def reopenable_run(client: Any, run_id: str, tracking_uri: str) -> Any:
    """The run `run_id` of this store to continue, or None (absent or deleted: warned).

    Args:
        client: the `mlflow.MlflowClient` of the store.
        run_id: the id read from a job's output dir.
        tracking_uri: the store's URI, for the warning.

    Returns:
        The `mlflow.entities.Run`, or None when a new run should be started.
    """
    from mlflow.exceptions import MlflowException

    try:
        run = retry(lambda: client.get_run(run_id), "get run")
    except MlflowException as error:
        logger.warning(
            "MLflow: run %s from the output dir is not in %s (%s); starting a new run",
            run_id,
            tracking_uri,
            error,
        )
        return None
    if run.info.lifecycle_stage == "deleted":
        logger.warning("MLflow: run %s was deleted; starting a new run", run_id)
        return None
    return run


def get_or_create_experiment(
    client: Any, name: str, artifact_location: str | None, tracking_uri: str
) -> str:
    """Return the id of experiment `name`, creating it (with `artifact_location`) if needed.

    A new experiment is created with tag `mlflow.experimentKind` = `custom_model_development`;
    an existing one without a kind (or with a kind the UI only inferred, `*_inferred`) is given
    that tag (`ensure_experiment_kind`). A kind someone set explicitly is kept.

    Args:
        client: the `mlflow.MlflowClient` of the store.
        name: the experiment name (`tracking.experiment_name`).
        artifact_location: where a new experiment keeps artifacts (None: the server decides).
        tracking_uri: the store's URI, for the error message.

    Raises:
        ConfigError: the experiment exists but is deleted (one line naming
            tracking.experiment_name and how to restore it).
        MlflowException: the store refuses the call.
    """
    from mlflow.exceptions import MlflowException

    experiment = retry(lambda: client.get_experiment_by_name(name), "get experiment")
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            from unet3d.errors import ConfigError

            raise ConfigError(deleted_experiment(name, tracking_uri, experiment.experiment_id))
        ensure_experiment_kind(client, experiment)
        return experiment.experiment_id
    try:
        return retry(
            lambda: client.create_experiment(
                name, artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            ),
            "create experiment",
        )
    except MlflowException:
        # Created concurrently by another job: use it.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        ensure_experiment_kind(client, experiment)
        return experiment.experiment_id


def deleted_experiment(name: str, uri: str, experiment_id: str) -> str:
    """The line of a deleted experiment (``tracking.experiment_name``)."""
    return (f"tracking.experiment_name: experiment {name!r} (id {experiment_id}) is deleted in "
            f"{uri}; restore it (MLFLOW_TRACKING_URI={uri} mlflow experiments restore "
            f"--experiment-id {experiment_id}) or choose another tracking.experiment_name")


def ensure_experiment_kind(client: Any, experiment: Any) -> bool:
    """Tag `experiment` as a model-training experiment unless it has an explicit kind.

    Args:
        client: the `mlflow.MlflowClient` of the store.
        experiment: the `mlflow.entities.Experiment` (its `tags` are read).

    Returns:
        True when the tag was set now, False when the experiment already had a kind.

    Raises:
        MlflowException: the store refuses the call (e.g. a read-only server).
    """
    kind = (experiment.tags or {}).get(EXPERIMENT_KIND_TAG)
    if kind and not str(kind).endswith("_inferred"):
        return False
    retry(
        lambda: client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        ),
        "set experiment kind",
    )
    logger.info("MLflow: experiment %s (%s) marked as %s", experiment.name,
                experiment.experiment_id, EXPERIMENT_KIND)
    return True
