"""The MLflow Model Registry: register a trained job (or a sweep's fold ensemble) as a version.

A registered version points at the MLflow run whose folder holds the checkpoints: a job's run
(tag ``output_dir``) or a cross-validation sweep's parent run (tag ``unet3d.sweep_dir``: every
fold = an ensemble). Its ``run_id`` is that run (also tag ``unet3d.run_id``), its source the
segmentation pyfunc logged on it (``unet3d.serving.pyfunc_model``, so that ``mlflow models
serve -m models:/<name>@<alias>`` serves it) else the run's artifacts, and its description the
held-out metrics. ``predict.checkpoint=models:/<name>@<alias>`` reads it back to the run's
folder (``unet3d.tracking.references``).

Config: ``tracking.register_model`` (null or a registered model name) and
``tracking.model_alias`` (null or an alias such as ``champion``). ``publish_model`` is the one
call of the runner (a finished training job) and of the sweep callback (a sweep's folds).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from unet3d.config import registry_problem
from unet3d.config.settings import MODEL_REFERENCE_PREFIX
from unet3d.errors import ConfigError
from unet3d.tracking.references import RUN_TAG, is_model_reference
from unet3d.tracking.store import retry

logger = logging.getLogger(__name__)

#: Version tag recording what a version is (``job`` or ``ensemble``).
KIND_TAG = "unet3d.kind"


def registry_settings(tracking_cfg: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """``tracking.register_model`` and ``tracking.model_alias`` (None when unset).

    Raises:
        ConfigError: a value ``unet3d.config.registry_problem`` refuses (also checked by
            ``unet3d.config.validate`` before the job starts).
    """
    section = tracking_cfg if tracking_cfg is not None else {}
    name, alias = section.get("register_model"), section.get("model_alias")
    problem = registry_problem(name, alias)
    if problem is not None:
        raise ConfigError(problem)
    return name, alias


def describe_metrics(metrics: Mapping[str, Any], heading: str) -> str:
    """A Markdown description: ``heading`` then one ``- name: value`` line per finite metric."""
    import math

    lines = [heading, ""]
    for name in sorted(metrics):
        value = metrics[name]
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            lines.append(f"- {name}: {float(value):.4f}")
    return "\n".join(lines)


@contextlib.contextmanager
def _global_tracking_uri(client: Any) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``client``'s store for a call, then restore it.

    MLflow's SQL registry resolves a ``models:/<logged model id>`` source through the global
    URI, not through the client's.
    """
    import mlflow

    uri = getattr(getattr(client, "_tracking_client", None), "tracking_uri", None)
    previous = mlflow.get_tracking_uri()
    if uri:
        mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def register_run_model(
    client: Any,
    name: str,
    run_id: str,
    metrics: Mapping[str, Any],
    alias: str | None = None,
    source: str | None = None,
    kind: str = "job",
) -> Any:
    """Register the model of run ``run_id`` as a new version of ``name``; set ``alias`` on it.

    Args:
        client: the ``mlflow.MlflowClient`` of the store.
        name: the registered model (created when missing).
        run_id: the run whose folder holds the checkpoints (a job's run, or a sweep's parent
            run for a fold ensemble).
        metrics: held-out metrics written into the version's description.
        alias: moved to the new version (e.g. ``champion``); None sets none.
        source: the model URI to register (``models:/<logged model id>``, e.g. the pyfunc of
            ``log_segmentation_model``); None: the run's tag ``unet3d.model_uri`` when set,
            else the run's artifact root.
        kind: ``job`` or ``ensemble`` (tag ``unet3d.kind`` and the description's heading).

    Returns:
        The new ``ModelVersion``.

    Raises:
        MlflowException: the store refuses the call.
    """
    from mlflow.exceptions import MlflowException

    run = retry(lambda: client.get_run(run_id), "get run")
    if source is None:
        source = run.data.tags.get("unet3d.model_uri") or run.info.artifact_uri
    try:
        retry(lambda: client.create_registered_model(
            name, description="unet3d 3D U-Net brain-tumour segmentation "
                              "(predict: checkpoint=models:/<name>@<alias>)"),
              "create registered model")
    except MlflowException as error:
        if "already exists" not in str(error).lower() and \
                getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    folder = run.data.tags.get("unet3d.sweep_dir") or run.data.tags.get("output_dir") or ""
    heading = (f"Fold ensemble of sweep {folder} (parent run {run_id}); mean held-out metrics:"
               if kind == "ensemble" else
               f"unet3d job {run.info.run_name} (run {run_id}, {folder}); held-out metrics:")
    model_id = source[len(MODEL_REFERENCE_PREFIX):] if is_model_reference(source) else None
    with _global_tracking_uri(client):  # the registry looks the logged model up there
        version = retry(lambda: client.create_model_version(
            name, source, run_id=run_id, description=describe_metrics(metrics, heading),
            tags={RUN_TAG: run_id, KIND_TAG: kind, "unet3d.folder": folder},
            model_id=model_id), "create model version")
    if alias:
        retry(lambda: client.set_registered_model_alias(name, alias, version.version),
              "set alias")
    logger.info("MLflow: registered %s version %s%s from run %s (%s)", name, version.version,
                f" as @{alias}" if alias else "", run_id, source)
    return version


def register_job_model(tracker: Any, metrics: Mapping[str, Any], kind: str = "job",
                       source: str | None = None) -> Any:
    """Register the finished job's run (or a sweep parent's) when ``tracking.register_model``.

    Call after the job's metrics are known, before the run ends. Never raises: a failure is
    logged at ERROR level and counted in ``tracker.tracking_errors`` (the trained checkpoints
    are not lost; register later with ``register_run_model``). A bad ``tracking.*`` value
    is the exception: ConfigError.

    Args:
        tracker: the running ``Tracker`` of the job (or the sweep's parent run).
        metrics: the held-out metrics (``eval/...`` or the sweep's mean).
        kind: ``job`` or ``ensemble``.
        source: the model URI to register (see ``register_run_model``).

    Returns:
        The ``ModelVersion``, or None when not configured, inactive or failed.
    """
    name, alias = registry_settings(getattr(tracker, "tracking_cfg", None))
    if name is None or not getattr(tracker, "running", False):
        return None
    try:
        version = register_run_model(tracker.client, name, str(tracker.run_id), metrics,
                                     alias=alias, source=source, kind=kind)
        tracker.set_tags({"unet3d.registered_model": f"{name}/{version.version}"})
        return version
    except Exception:  # noqa: BLE001 - a registry failure must not fail a finished training
        tracker.tracking_errors += 1
        logger.exception("MLflow: registering run %s as %s failed", tracker.run_id, name)
        return None


def publish_model(tracker: Any, cfg: Any, checkpoint_spec: Any, metrics: Mapping[str, Any],
                  kind: str = "job") -> Any:
    """With ``tracking.register_model``: log the segmentation pyfunc and register it.

    The one call for the runner (after a training job: ``checkpoint_spec`` = the job's output
    dir, ``kind="job"``) and for the sweep callback (``checkpoint_spec`` = the sweep dir, the
    parent run's tracker, ``kind="ensemble"``). Never raises except ConfigError for bad
    ``tracking.*`` values: a failure is logged at ERROR level and counted in
    ``tracker.tracking_errors``.

    Args:
        tracker: the running tracker of the job or of the sweep's parent run.
        cfg: the job's config (the pyfunc's inference settings).
        checkpoint_spec: the job's output dir or the sweep dir.
        metrics: held-out metrics for the version's description.
        kind: ``job`` or ``ensemble``.

    Returns:
        The new ``ModelVersion``, or None.
    """
    name, _ = registry_settings(getattr(tracker, "tracking_cfg", None))
    if name is None or not getattr(tracker, "running", False):
        return None
    try:
        from unet3d.serving.pyfunc_model import log_segmentation_model

        source = log_segmentation_model(tracker, cfg, checkpoint_spec)
    except Exception:  # noqa: BLE001 - the run's artifacts are registered instead
        tracker.tracking_errors += 1
        logger.exception("MLflow: logging the segmentation pyfunc of run %s failed; "
                         "registering the run without it", tracker.run_id)
        source = None
    return register_job_model(tracker, metrics, kind=kind, source=source)
