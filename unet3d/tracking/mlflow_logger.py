"""MLflow tracking of one job: a `Tracker` that is a no-op on non-chief ranks.

The tracker talks to MLflow through an explicit `mlflow.MlflowClient` (no fluent active-run
stack), so several trackers can live in one process (Hydra's basic launcher runs every job of a
sweep in the same process, next to the sweep's parent run).

Store: `tracking.uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///<root_dir>/mlflow.db` with
artifacts under `<root_dir>/mlartifacts`, so `mlflow ui` started in the root dir shows
everything (`mlflow ui --backend-store-uri sqlite:///mlflow.db` on MLflow < 3.7).

Resume: `start` persists the run id to `<output_dir>/mlflow_run_id`; a job restarted in the same
output dir (after SIGKILL, or `resume=true`) reopens that run instead of creating a new one.

MLflow is imported lazily: importing this module costs nothing, and a disabled or non-chief
tracker never imports MLflow.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from unet3d.runs.files import write_text_atomic

logger = logging.getLogger(__name__)

#: File in a job's output dir that holds its MLflow run id (read back on resume).
RUN_ID_FILE = "mlflow_run_id"
#: Terminal statuses accepted by `Tracker.end`.
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow limits (mlflow/utils/validation.py, 3.x).
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

_INVALID_NAME_CHARACTERS = re.compile(r"[^/\w.\- ]")
_RETRYABLE_MESSAGES = ("database is locked", "database table is locked")

_T = TypeVar("_T")


class TerminationRequested(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (ends the run as KILLED).

    It derives from `KeyboardInterrupt` so that `except Exception` blocks (Hydra's `run_job`,
    library code) do not swallow it.
    """


# --------------------------------------------------------------------------- helpers


def resolve_tracking_uri(
    tracking_cfg: Mapping[str, Any] | None, root_dir: str | os.PathLike
) -> str:
    """Return the tracking URI: `tracking.uri`, else `$MLFLOW_TRACKING_URI`, else local SQLite.

    The local default is `sqlite:///<absolute root_dir>/mlflow.db`.
    """
    uri = _cfg_get(tracking_cfg, "uri")
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

    `tracking.artifact_location` wins; otherwise a local store (`sqlite:`, `file:` or a path)
    gets `<root_dir>/mlartifacts` as a file URI, and a server (`http(s)://`, `databricks`) None
    (`mlflow server --serve-artifacts` then proxies artifacts).
    """
    location = _cfg_get(tracking_cfg, "artifact_location")
    if location:
        location = str(location)
        if "://" not in location and not location.startswith("file:"):
            return Path(location).resolve().as_uri()
        return location
    if _is_local_store(tracking_uri):
        return (Path(root_dir).resolve() / "mlartifacts").as_uri()
    return None


def git_tags(repo_dir: str | os.PathLike) -> dict[str, str]:
    """Return MLflow git tags for `repo_dir`: commit, branch and dirty flag ({} without git).

    Keys: `mlflow.source.git.commit`, `mlflow.source.git.branch`, `git_dirty` ("true"/"false",
    tracked files only).
    """

    def git(*arguments: str) -> str | None:
        try:
            completed = subprocess.run(
                ["git", "-C", str(repo_dir), *arguments],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return completed.stdout.strip() if completed.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {"mlflow.source.git.commit": commit}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags["git_dirty"] = "true" if status else "false"
    return tags


def flatten_config(config: Any, exclude: Sequence[str] = ()) -> dict[str, str]:
    """Flatten a config into dotted keys with string values, resolving interpolations.

    Accepts OmegaConf containers or plain mappings. Lists become JSON strings, empty mappings
    "{}", None "None". A value whose interpolation cannot be resolved (e.g. `${hydra:...}`
    outside a Hydra job, or a missing `???`) is kept verbatim. Keys in `exclude` (dotted, e.g.
    "hydra") are left out with everything under them.
    """
    flat: dict[str, str] = {}
    _flatten_into(config, "", frozenset(exclude), flat)
    return flat


def _flatten_into(node: Any, key: str, exclude: frozenset[str], flat: dict[str, str]) -> None:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | Mapping):
        if len(node) == 0 and key:
            flat[key] = "{}"
        raw: Any = None
        for child_key in list(node.keys()):
            child_path = f"{key}.{child_key}" if key else str(child_key)
            if child_path in exclude:
                continue
            try:
                child = node[child_key]
            except Exception:  # noqa: BLE001 - unresolvable: log the raw value
                if raw is None:
                    raw = OmegaConf.to_container(node, resolve=False)
                flat[child_path] = str(raw.get(child_key))
                continue
            _flatten_into(child, child_path, exclude, flat)
    elif isinstance(node, ListConfig):
        try:
            values = OmegaConf.to_container(node, resolve=True)
        except Exception:  # noqa: BLE001
            values = OmegaConf.to_container(node, resolve=False)
        flat[key] = json.dumps(values, default=str)
    elif isinstance(node, list | tuple):
        flat[key] = json.dumps(list(node), default=str)
    else:
        flat[key] = str(node)


def sanitize_name(name: str) -> str:
    """Make `name` a valid MLflow metric/param key (invalid characters become `_`)."""
    cleaned = _INVALID_NAME_CHARACTERS.sub("_", str(name)).strip("/") or "_"
    cleaned = re.sub(r"/+", "/", cleaned)
    return cleaned[:MAX_KEY_LENGTH]


def read_run_id_file(path: str | os.PathLike) -> str | None:
    """Return the run id stored in `path`, or None when the file is missing or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def _cfg_get(cfg: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    try:
        value = cfg.get(key, default)
    except Exception:  # noqa: BLE001 - an OmegaConf interpolation error: treat as unset
        logger.warning("tracking.%s could not be resolved; using %r", key, default)
        return default
    return default if value is None else value


def _is_local_store(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].lower() if "://" in uri or uri.startswith("sqlite:") else ""
    return scheme in ("", "sqlite", "file")


def _config_yaml(config: Any) -> str:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return json.dumps(config, indent=2, default=str)
    if isinstance(config, DictConfig | ListConfig):
        try:
            return OmegaConf.to_yaml(config, resolve=True)
        except Exception:  # noqa: BLE001
            return OmegaConf.to_yaml(config, resolve=False)
    return OmegaConf.to_yaml(OmegaConf.create(config))


@contextlib.contextmanager
def _sqlite_store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on the folder of a `sqlite:///` store (no-op for other stores).

    MLflow creates the tables of a new SQLite store (and migrates an old one) when a client
    opens it; two processes doing it at once (parallel jobs on a fresh store) fail with "duplicate
    column" / "table already exists" errors.
    """
    prefix = "sqlite:///"
    path = uri.split("?", 1)[0][len(prefix):] if uri.startswith(prefix) else ""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None  # type: ignore[assignment]
    if not path or path == ":memory:" or fcntl is None:
        yield
        return
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _retry(operation: Callable[[], _T], description: str, attempts: int = 6) -> _T:
    """Run `operation`, retrying when SQLite reports a lock (parallel jobs on one store)."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as error:
            message = str(error).lower()
            if attempt == attempts or not any(text in message for text in _RETRYABLE_MESSAGES):
                raise
            logger.debug("%s: store locked (attempt %d), retrying: %s", description, attempt, error)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
    raise AssertionError("unreachable")  # pragma: no cover


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


def _default_pip_requirements() -> list[str]:
    """Pin the installed TensorFlow/Keras/NumPy (skips MLflow's slow requirement inference)."""
    from importlib import metadata

    requirements = []
    for distribution in ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "keras", "numpy"):
        try:
            requirements.append(f"{distribution}=={metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            continue
    return requirements


def _tensor_signature(model: Any, example_input: Any, example_output: Any) -> Any:
    """Signature with batch dim -1 and every dim the model leaves open (None) as -1."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(array: Any, declared_shape: Any) -> Any:
        array = np.asarray(array)
        shape = [-1] + list(array.shape[1:])
        if isinstance(declared_shape, tuple) and len(declared_shape) == len(shape):
            shape = [-1] + [
                -1 if declared is None else int(actual)
                for declared, actual in zip(declared_shape[1:], shape[1:], strict=True)
            ]
        return TensorSpec(array.dtype, tuple(shape))

    input_shape = getattr(model, "input_shape", None)
    output_shape = getattr(model, "output_shape", None)
    return ModelSignature(
        inputs=Schema([spec(example_input, input_shape)]),
        outputs=Schema([spec(example_output, output_shape)]),
    )


# --------------------------------------------------------------------------- tracker


class Tracker:
    """One job's MLflow run. Every method is a no-op when disabled or not the chief rank.

    Typical use by the runner::

        tracker = Tracker(cfg.tracking, cfg.paths.root_dir, is_chief=context.is_chief)
        tracker.start(cfg, output_dir, run_name="train_and_evaluate-fold0",
                      tags={...} | git_tags(repo), parent_run_id=current_parent_run_id())
        with tracked_run(tracker):        # FAILED / KILLED on errors, FINISHED on success
            ...
            tracker.log_metrics({"train/loss": 0.3}, step=100)
            tracker.log_model(model, example_input)

    Logging calls made while training (`log_metrics`, `log_artifact`, ...) never raise: a
    tracking failure is logged at ERROR level and counted (`tracking_errors`), so a flaky store
    does not kill a long training job. `start` and `end` raise.
    """

    def __init__(
        self,
        tracking_cfg: Mapping[str, Any] | None,
        root_dir: str | os.PathLike,
        enabled: bool = True,
        is_chief: bool = True,
    ) -> None:
        self.tracking_cfg = tracking_cfg
        self.root_dir = Path(root_dir)
        self.enabled = bool(enabled) and bool(_cfg_get(tracking_cfg, "enabled", True))
        self.is_chief = bool(is_chief)
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.resumed = False
        self.ended = False
        self.tracking_errors = 0
        self._client: Any = None

    # ---- state

    @property
    def active(self) -> bool:
        """True when this tracker logs (enabled and chief)."""
        return self.enabled and self.is_chief

    @property
    def running(self) -> bool:
        """True between a successful `start` and `end`."""
        return self.active and self.run_id is not None and not self.ended

    @property
    def client(self) -> Any:
        """The `mlflow.MlflowClient` bound to this tracker's URI (created on first use)."""
        if self._client is None:
            from mlflow import MlflowClient

            if self.tracking_uri is None:
                self.tracking_uri = resolve_tracking_uri(self.tracking_cfg, self.root_dir)
            # Opening a SQLite store creates (or migrates) its tables: one process at a time.
            with _sqlite_store_lock(self.tracking_uri):
                self._client = _retry(
                    lambda: MlflowClient(tracking_uri=self.tracking_uri), "open store"
                )
        return self._client

    # ---- lifecycle

    def start(
        self,
        cfg: Any,
        output_dir: str | os.PathLike,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        run_id_file: str = RUN_ID_FILE,
    ) -> str | None:
        """Create (or, on resume, reopen) the run and log `cfg` (skipped when None).

        When `<output_dir>/<run_id_file>` names a run of this store, that run is set back to
        RUNNING and reused; otherwise a new run is created in `tracking.experiment_name` (nested
        under `parent_run_id` via the `mlflow.parentRunId` tag) and its id written there
        atomically. Returns the run id (None when inactive).
        """
        if not self.active:
            return None
        self.tracking_uri = resolve_tracking_uri(self.tracking_cfg, self.root_dir)
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        run_id_path = output_dir / run_id_file
        tags = {str(key): str(value) for key, value in (tags or {}).items()}

        existing_run_id = read_run_id_file(run_id_path)
        run = self._reopen(existing_run_id) if existing_run_id else None
        if run is not None:
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
            self.resumed = True
            _retry(lambda: self.client.update_run(self.run_id, status="RUNNING"), "reopen run")
            tags["unet3d.resumed"] = "true"
            logger.info("MLflow: resumed run %s (%s)", self.run_id, self.tracking_uri)
        else:
            self.experiment_id = self._get_or_create_experiment()
            base_tags = {
                "mlflow.user": _user_name(),
                "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "python",
                "mlflow.source.type": "LOCAL",
                "unet3d.output_dir": str(output_dir.resolve()),
            }
            if parent_run_id:
                base_tags["mlflow.parentRunId"] = parent_run_id
            all_tags = {**base_tags, **tags}
            run = _retry(
                lambda: self.client.create_run(
                    self.experiment_id, run_name=run_name, tags=all_tags
                ),
                "create run",
            )
            self.run_id = run.info.run_id
            tags = {}
            write_text_atomic(run_id_path, self.run_id + "\n")
            logger.info(
                "MLflow: run %s (%s) in experiment %s at %s",
                self.run_id,
                run.info.run_name,
                self.experiment_id,
                self.tracking_uri,
            )
        self.ended = False
        if tags:
            self._set_tags_now(tags)
        if cfg is not None:
            self.log_config(cfg)
        return self.run_id

    def end(self, status: str = "FINISHED", error: str | BaseException | None = None) -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED); idempotent.

        For FAILED/KILLED the error (message or exception) is recorded as tag `error` (one
        line, truncated) and as artifact `error.txt` (full text with traceback). The terminal
        status is always attempted, even when recording the error fails.
        """
        status = str(status).upper()
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status: must be one of {TERMINAL_STATUSES}, got {status!r}")
        if not self.running:
            return
        run_id = self.run_id
        try:
            if error is not None:
                full_text = _describe_error(error)
                self._set_tags_now({"error": _truncate(_error_line(error), 500)})
                self.log_text(full_text, "error.txt")
            if self.tracking_errors:
                self._set_tags_now({"unet3d.tracking_errors": str(self.tracking_errors)})
        except Exception:  # noqa: BLE001 - the status below matters more
            logger.exception("MLflow: could not record the error of run %s", run_id)
        finally:
            _retry(lambda: self.client.set_terminated(run_id, status=status), "end run")
            self.ended = True
            logger.info("MLflow: run %s ended %s", run_id, status)

    # ---- params, tags, metrics

    def log_config(self, cfg: Any) -> None:
        """Log the whole config as dotted params plus `config.yaml` (resolved) as an artifact."""
        if not self.running:
            return
        self.log_params(flatten_config(cfg))
        self.log_text(_config_yaml(cfg), "config.yaml")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params in batches of 100; on resume, skip keys already logged with that value.

        A param whose value changed since the run was first logged (MLflow forbids changing
        it) is not re-logged; the change is recorded in tag `unet3d.changed_params` and a
        warning. Values over 6000 characters are truncated (the full config is in config.yaml).
        """
        if not self.running:
            return
        self._guard("log params", lambda: self._log_params_now(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as strings, truncated to 8000 characters)."""
        if not self.running:
            return
        self._guard("set tags", lambda: self._set_tags_now(tags))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log finite numeric metrics at `step` in one batch; NaN/inf/non-numbers are skipped."""
        if not self.running:
            return
        self._guard("log metrics", lambda: self._log_metrics_now(metrics, step))

    # ---- artifacts and models

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload one file under `artifact_path` (None = the artifact root)."""
        if not self.running:
            return
        self._guard(
            f"log artifact {path}",
            lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
        )

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a folder's content under `artifact_path`."""
        if not self.running:
            return
        self._guard(
            f"log artifacts {directory}",
            lambda: self.client.log_artifacts(self.run_id, str(directory), artifact_path),
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write `text` as the artifact `artifact_file` (e.g. "tables/cv.md")."""
        if not self.running:
            return
        self._guard(
            f"log text {artifact_file}",
            lambda: self.client.log_text(self.run_id, text, artifact_file),
        )

    def log_model(
        self,
        model: Any,
        example_input: Any,
        name: str = "model",
        custom_objects: Mapping[str, Any] | None = None,
        code_paths: Sequence[str] | None = None,
        pip_requirements: Sequence[str] | None = None,
    ) -> str | None:
        """Log a Keras model with MLflow's TensorFlow flavour and an inferred tensor signature.

        The signature comes from running the model on `example_input` (a small batch,
        np.ndarray): batch dim and every dim the model leaves open are -1, so a model with
        `None` spatial dims accepts any volume size. MLflow 3 stores it as a LoggedModel under
        `<experiment artifacts>/models/<model_id>/` linked to this run (a run output).

        Returns the model URI `models:/<model_id>` (`runs:/<run_id>/<name>` also resolves),
        or None when inactive or on failure (logged at ERROR). Load it back with
        `mlflow.pyfunc.load_model(uri).predict(array)` or `mlflow.tensorflow.load_model(uri)`.
        Custom layers must be importable at load time: pass `custom_objects` and/or
        `code_paths` (e.g. the `unet3d` package folder).
        """
        if not self.running:
            return None
        return self._guard(
            "log model",
            lambda: self._log_model_now(
                model, example_input, name, custom_objects, code_paths, pip_requirements
            ),
        )

    # ---- internals

    def _guard(self, description: str, operation: Callable[[], _T]) -> _T | None:
        try:
            return _retry(operation, description)
        except Exception:  # noqa: BLE001 - tracking must not kill training
            self.tracking_errors += 1
            logger.exception("MLflow: %s failed for run %s", description, self.run_id)
            return None

    def _reopen(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            run = _retry(lambda: self.client.get_run(run_id), "get run")
        except MlflowException as error:
            logger.warning(
                "MLflow: run %s from the output dir is not in %s (%s); starting a new run",
                run_id,
                self.tracking_uri,
                error,
            )
            return None
        if run.info.lifecycle_stage == "deleted":
            logger.warning("MLflow: run %s was deleted; starting a new run", run_id)
            return None
        return run

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name = str(_cfg_get(self.tracking_cfg, "experiment_name", "unet3d"))
        experiment = _retry(lambda: self.client.get_experiment_by_name(name), "get experiment")
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise ValueError(
                    f"tracking.experiment_name: experiment {name!r} is deleted in "
                    f"{self.tracking_uri}; restore it (mlflow experiments restore) or rename"
                )
            return experiment.experiment_id
        location = resolve_artifact_location(self.tracking_cfg, self.root_dir, self.tracking_uri)
        try:
            return _retry(
                lambda: self.client.create_experiment(name, artifact_location=location),
                "create experiment",
            )
        except MlflowException:
            # Created concurrently by another job: use it.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _set_tags_now(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entries = [
            RunTag(sanitize_name(key), _truncate(str(value), MAX_TAG_VALUE_LENGTH))
            for key, value in tags.items()
        ]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            _retry(lambda c=chunk: self.client.log_batch(self.run_id, tags=list(c)), "set tags")

    def _log_params_now(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        values = {
            sanitize_name(key): _truncate(str(value), MAX_PARAM_VALUE_LENGTH)
            for key, value in params.items()
        }
        existing = _retry(lambda: self.client.get_run(self.run_id), "get run").data.params
        changed = {
            key: (existing[key], value)
            for key, value in values.items()
            if key in existing and existing[key] != value
        }
        new = [Param(key, value) for key, value in values.items() if key not in existing]
        for chunk in _chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=list(chunk))
        if changed:
            description = "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in changed.items())
            logger.warning(
                "MLflow: params changed since run %s was started (kept the first values): %s",
                self.run_id,
                description,
            )
            self._set_tags_now({"unet3d.changed_params": description})

    def _log_metrics_now(self, metrics: Mapping[str, Any], step: int | None) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                logger.debug("MLflow: metric %s=%r is not a number; skipped", key, value)
                continue
            if not math.isfinite(number):
                logger.debug("MLflow: metric %s=%r is not finite; skipped", key, value)
                continue
            entries.append(Metric(sanitize_name(key), number, timestamp, int(step or 0)))
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=list(chunk))

    def _log_model_now(
        self,
        model: Any,
        example_input: Any,
        name: str,
        custom_objects: Mapping[str, Any] | None,
        code_paths: Sequence[str] | None,
        pip_requirements: Sequence[str] | None,
    ) -> str:
        import mlflow
        import mlflow.tensorflow
        import numpy as np

        example_input = np.asarray(example_input)
        example_output = model(example_input, training=False)
        example_output = np.asarray(
            example_output.numpy() if hasattr(example_output, "numpy") else example_output
        )
        signature = _tensor_signature(model, example_input, example_output)
        logged = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id
        )
        # log_model resolves the store from the global tracking URI: point it at ours.
        previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            info = mlflow.tensorflow.log_model(
                model,
                name=name,
                signature=signature,
                custom_objects=dict(custom_objects) if custom_objects else None,
                code_paths=list(code_paths) if code_paths else None,
                pip_requirements=list(pip_requirements or _default_pip_requirements()),
                model_id=logged.model_id,
                run_id=self.run_id,
            )
        finally:
            mlflow.set_tracking_uri(previous_uri)
        model_uri = f"models:/{info.model_id}"
        self._set_tags_now({"unet3d.model_uri": model_uri})
        logger.info("MLflow: logged model %s (run %s)", model_uri, self.run_id)
        return model_uri


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def _error_line(error: str | BaseException) -> str:
    if isinstance(error, BaseException):
        message = str(error).strip().splitlines()
        return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else "error"


def _describe_error(error: str | BaseException) -> str:
    if isinstance(error, BaseException):
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return str(error)


# --------------------------------------------------------------------------- termination


def _raise_termination(signal_number: int, frame: Any) -> None:
    """SIGTERM handler: raise `TerminationRequested` once; later SIGTERMs let cleanup finish."""
    if getattr(_raise_termination, "raised", False):
        logger.warning("SIGTERM received again; still cleaning up")
        return
    _raise_termination.raised = True  # type: ignore[attr-defined]
    raise TerminationRequested(f"terminated by signal {signal.Signals(signal_number).name}")


def install_termination_handlers() -> Callable[[], None]:
    """Turn SIGTERM into `TerminationRequested` (a KeyboardInterrupt) in the main thread.

    Returns a function restoring the previous handler. Outside the main thread (signals can
    only be handled there) it installs nothing and returns a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        logger.debug("Not the main thread: SIGTERM handler not installed")
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    _raise_termination.raised = False  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, _raise_termination)

    def restore() -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return restore


@contextlib.contextmanager
def tracked_run(tracker: Tracker, handle_sigterm: bool = True) -> Iterator[Tracker]:
    """End `tracker`'s run according to how the block exits, then re-raise.

    - normal exit, or `SystemExit(0)`: FINISHED (unless the block already ended the run);
    - `KeyboardInterrupt`, SIGTERM (`TerminationRequested`): KILLED;
    - any other exception (including `FloatingPointError` for a NaN loss, non-zero
      `SystemExit`): FAILED.
    The error is recorded as tag `error` and artifact `error.txt`. With `handle_sigterm`,
    SIGTERM raises `TerminationRequested` in the main thread while the block runs.
    """
    restore = install_termination_handlers() if handle_sigterm else (lambda: None)
    try:
        yield tracker
    except KeyboardInterrupt as error:
        _end_quietly(tracker, "KILLED", error)
        raise
    except SystemExit as error:
        if error.code in (None, 0):
            _end_quietly(tracker, "FINISHED", None)
        else:
            _end_quietly(tracker, "FAILED", error)
        raise
    except BaseException as error:
        _end_quietly(tracker, "FAILED", error)
        raise
    else:
        tracker.end("FINISHED")
    finally:
        restore()


def _end_quietly(tracker: Tracker, status: str, error: BaseException | None) -> None:
    try:
        tracker.end(status, error)
    except Exception:  # noqa: BLE001 - keep the original exception
        logger.exception("MLflow: could not end run %s as %s", tracker.run_id, status)
