"""MLflow tracking of one job: a `Tracker` that is a no-op on non-chief ranks.

The tracker talks to MLflow through an explicit `mlflow.MlflowClient` (no fluent active-run
stack), so several trackers can live in one process (Hydra's basic launcher runs every job of a
sweep in the same process, next to the sweep's parent run). Where the store is and how parallel
jobs share it: `unet3d.tracking.store`.

Resume: `start` persists the run id to `<output_dir>/mlflow_run_id`; a job restarted in the same
output dir (after SIGKILL, or `resume=true`) reopens that run instead of creating a new one.

MLflow is imported lazily: importing this module costs nothing, and a disabled or non-chief
tracker never imports MLflow.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from unet3d.errors import TrackingStoreError, Unet3dError
from unet3d.runs.files import write_text_atomic
from unet3d.tracking.batches import log_metrics, log_new_params, set_tags, truncate
from unet3d.tracking.store import (
    get_or_create_experiment,
    open_client,
    reopenable_run,
    resolve_artifact_location,
    resolve_tracking_uri,
    retry,
)
from unet3d.tracking.store_check import check_store, is_store_error, store_problem
from unet3d.tracking.ui_links import ui_links_line
from unet3d.tracking.values import config_yaml, describe_error, error_line, flatten_config

logger = logging.getLogger(__name__)

#: File in a job's output dir that holds its MLflow run id (read back on resume).
RUN_ID_FILE = "mlflow_run_id"
#: Terminal statuses accepted by `Tracker.end`.
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")

_T = TypeVar("_T")


def read_run_id_file(path: str | os.PathLike) -> str | None:
    """Return the run id stored in `path`, or None when the file is missing or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


class Tracker:
    """One job's MLflow run. Every method is a no-op when disabled or not the chief rank.

    Typical use by the runner::

        tracker = Tracker(cfg.tracking, cfg.paths.root_dir, is_chief=context.is_chief)
        tracker.start(cfg, output_dir, run_name="train_and_evaluate-fold0",
                      tags={...} | git_tags(repo),  # unet3d.runs.provenance
                      parent_run_id=current_parent_run_id())
        with tracked_run(tracker):        # FAILED / KILLED on errors, FINISHED on success
            ...
            tracker.log_metrics({"train/loss": 0.3}, step=100)
            tracker.log_model(model, example_input)

    Logging calls made while training (`log_metrics`, `log_artifact`, ...) never raise: a
    tracking failure is logged at ERROR level and counted (`tracking_errors`), so a flaky store
    does not kill a long training job. `start` and `end` raise.

    Args:
        tracking_cfg: the `tracking` config section (enabled, uri, experiment_name,
            artifact_location), or None for the defaults.
        root_dir: the project root (`paths.root_dir`) holding the local store.
        enabled: False turns every call into a no-op (as `tracking.enabled=false` does).
        is_chief: only the chief rank logs.
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
        section = tracking_cfg if tracking_cfg is not None else {}
        self.enabled = bool(enabled) and bool(section.get("enabled", True))
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
            if self.tracking_uri is None:
                self.tracking_uri = resolve_tracking_uri(self.tracking_cfg, self.root_dir)
            self._client = open_client(self.tracking_uri)
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
        RUNNING and reused (and nested under `parent_run_id` when given and it was nested
        elsewhere: a resumed sweep whose parent run was deleted got a new one); otherwise a
        new run is created in `tracking.experiment_name` (nested under `parent_run_id` via the
        `mlflow.parentRunId` tag) and its id written there
        atomically. Returns the run id (None when inactive).

        Raises:
            TrackingStoreError: the store is down, locked, corrupted or of a newer MLflow (one
                line naming tracking.uri; `unet3d.tracking.store_check`).
            ConfigError: the experiment `tracking.experiment_name` is deleted.
        """
        if not self.active:
            return None
        self.tracking_uri = check_store(self.tracking_cfg, self.root_dir)
        try:
            return self._start(cfg, Path(output_dir), run_name, tags, parent_run_id,
                               run_id_file)
        except Exception as error:
            if isinstance(error, Unet3dError) or not is_store_error(error):
                raise
            raise TrackingStoreError(store_problem(str(self.tracking_uri), error)) from error

    def _start(self, cfg: Any, output_dir: Path, run_name: str | None,
               tags: Mapping[str, Any] | None, parent_run_id: str | None,
               run_id_file: str) -> str | None:
        output_dir.mkdir(parents=True, exist_ok=True)
        run_id_path = output_dir / run_id_file
        tags = {str(key): str(value) for key, value in (tags or {}).items()}

        existing_run_id = read_run_id_file(run_id_path)
        run = (reopenable_run(self.client, existing_run_id, self.tracking_uri)
               if existing_run_id else None)
        if run is not None:
            self.run_id = run.info.run_id
            self.experiment_id = run.info.experiment_id
            self.resumed = True
            retry(lambda: self.client.update_run(self.run_id, status="RUNNING"), "reopen run")
            tags["unet3d.resumed"] = "true"
            earlier_parent = run.data.tags.get("mlflow.parentRunId")
            if parent_run_id and earlier_parent != parent_run_id:
                # A resumed sweep whose parent run was deleted has a new parent: move there.
                tags["mlflow.parentRunId"] = parent_run_id
                logger.info("MLflow: run %s now nests under the sweep's parent run %s (was %s)",
                            self.run_id, parent_run_id, earlier_parent or "top level")
            logger.info("MLflow: resumed run %s (%s)", self.run_id, self.tracking_uri)
        else:
            section = self.tracking_cfg if self.tracking_cfg is not None else {}
            self.experiment_id = get_or_create_experiment(
                self.client,
                str(section.get("experiment_name") or "unet3d"),
                resolve_artifact_location(self.tracking_cfg, self.root_dir, self.tracking_uri),
                self.tracking_uri,
            )
            base_tags = {
                "mlflow.user": _user_name(),
                "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "python",
                "mlflow.source.type": "LOCAL",
                "unet3d.output_dir": str(output_dir.resolve()),
            }
            if parent_run_id:
                base_tags["mlflow.parentRunId"] = parent_run_id
            all_tags = {**base_tags, **tags}
            run = retry(
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
        status is always attempted, even when recording the error fails. The line logged last
        gives the run's page and the experiment's runs in MLflow's UI (`ui_links`).
        """
        status = str(status).upper()
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status: must be one of {TERMINAL_STATUSES}, got {status!r}")
        if not self.running:
            return
        run_id = self.run_id
        try:
            if error is not None:
                full_text = describe_error(error)
                self._set_tags_now({"error": truncate(error_line(error), 500)})
                self.log_text(full_text, "error.txt")
            if self.tracking_errors:
                self._set_tags_now({"unet3d.tracking_errors": str(self.tracking_errors)})
        except Exception:  # noqa: BLE001 - the status below matters more
            logger.exception("MLflow: could not record the error of run %s", run_id)
        finally:
            retry(lambda: self.client.set_terminated(run_id, status=status), "end run")
            self.ended = True
            logger.info("MLflow: run %s ended %s: %s", run_id, status, ui_links_line(
                self.tracking_cfg, str(self.tracking_uri), str(self.experiment_id), run_id))

    # ---- params, tags, metrics

    def log_config(self, cfg: Any) -> None:
        """Log the whole config as dotted params plus `config.yaml` (resolved) as an artifact."""
        if not self.running:
            return
        self.log_params(flatten_config(cfg))
        self.log_text(config_yaml(cfg), "config.yaml")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params in batches of 100; on resume, skip keys already logged with that value.

        A param whose value changed since the run was first logged (MLflow forbids changing
        it) is not re-logged; the change is recorded in tag `unet3d.changed_params` and a
        warning. Values over 6000 characters are truncated (the full config is in config.yaml).
        """
        if not self.running:
            return
        self._guard("log params", lambda: log_new_params(self.client, str(self.run_id), params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as strings, truncated to 8000 characters)."""
        if not self.running:
            return
        self._guard("set tags", lambda: self._set_tags_now(tags))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log finite numeric metrics at `step` in one batch; NaN/inf/non-numbers are skipped."""
        if not self.running:
            return
        self._guard(
            "log metrics", lambda: log_metrics(self.client, str(self.run_id), metrics, step)
        )

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
            return retry(operation, description)
        except Exception:  # noqa: BLE001 - tracking must not kill training
            self.tracking_errors += 1
            logger.exception("MLflow: %s failed for run %s", description, self.run_id)
            return None

    def _set_tags_now(self, tags: Mapping[str, Any]) -> None:
        set_tags(self.client, str(self.run_id), tags)

    def _log_model_now(
        self,
        model: Any,
        example_input: Any,
        name: str,
        custom_objects: Mapping[str, Any] | None,
        code_paths: Sequence[str] | None,
        pip_requirements: Sequence[str] | None,
    ) -> str:
        from unet3d.tracking.keras_model import log_keras_model

        model_uri = log_keras_model(
            self.client, str(self.tracking_uri), str(self.experiment_id), str(self.run_id),
            model, example_input, name, custom_objects, code_paths, pip_requirements,
        )
        self._set_tags_now({"unet3d.model_uri": model_uri})
        logger.info("MLflow: logged model %s (run %s)", model_uri, self.run_id)
        return model_uri


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"
