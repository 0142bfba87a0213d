"""MLflow run references (``runs:/<run id>``) as the model source of evaluate and predict.

A job's MLflow run carries its output dir (tag ``output_dir``), and the parent run of a
cross-validation sweep its sweep dir (tag ``unet3d.sweep_dir``). ``runs:/<run id>`` in
``checkpoint=`` or ``predict.checkpoint=`` is replaced by that folder, which then resolves like
any run dir or sweep dir (its newest checkpoint; every fold of a sweep = an ensemble). The
folder must exist on this machine: the checkpoints live there, not in MLflow.
``models:/<name>@<alias>`` and ``models:/<name>/<version>`` resolve through the registered
version's run the same way (``unet3d.tracking.registry``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unet3d.config.settings import RUN_REFERENCE_PREFIX
from unet3d.errors import CheckpointError, ConfigError

#: Tags that name a run's folder: a sweep's parent run first, then a job's run.
FOLDER_TAGS = ("unet3d.sweep_dir", "output_dir")


def is_run_reference(value: Any) -> bool:
    """True for a string of the form ``runs:/...``."""
    return isinstance(value, str) and value.startswith(RUN_REFERENCE_PREFIX)


def run_id_of(reference: str, key: str) -> str:
    """The run id of ``runs:/<run id>[/...]``; ConfigError naming ``key`` when it is empty."""
    run_id = reference[len(RUN_REFERENCE_PREFIX):].strip("/").split("/", 1)[0]
    if not run_id:
        raise ConfigError(f"{key}: {reference!r}: expected runs:/<MLflow run id>")
    return run_id


def _local_store_missing(tracking_uri: str) -> Path | None:
    """The SQLite file of a local ``sqlite:///`` store when it does not exist, else None."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.exists():
            return path
    return None


def run_folder(reference: str, tracking_uri: str, key: str) -> Path:
    """The output dir (or sweep dir) recorded on the MLflow run that ``reference`` names.

    Raises:
        ConfigError: the reference has no run id.
        CheckpointError: no such store or run, the run has no folder tag (not a unet3d run), or
            the folder does not exist on this machine.
    """
    run_id = run_id_of(reference, key)
    missing_store = _local_store_missing(tracking_uri)
    if missing_store is not None:
        raise CheckpointError(
            f"{key}: {reference}: no MLflow store at {missing_store} (set tracking.uri or "
            "MLFLOW_TRACKING_URI to the store that holds the run)"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException:
        raise CheckpointError(
            f"{key}: {reference}: no MLflow run {run_id} in {tracking_uri}"
        ) from None
    folder = next((run.data.tags[tag] for tag in FOLDER_TAGS if run.data.tags.get(tag)), None)
    if folder is None:
        raise CheckpointError(
            f"{key}: {reference}: the run has no output_dir tag (not a unet3d training run)"
        )
    if not Path(folder).exists():
        raise CheckpointError(
            f"{key}: {reference}: its output dir {folder} does not exist on this machine"
        )
    return Path(folder)


def resolve_run_references(spec: Any, tracking_uri: str | None, key: str) -> Any:
    """``spec`` with every ``runs:/<id>`` item replaced by its run's folder (as a string).

    ``models:/<name>@<alias>`` and ``models:/<name>/<version>`` (Model Registry) are replaced
    by the folder of the run their version points at (``unet3d.tracking.registry``). ``spec``
    is one value or a list; other items pass through unchanged. Without a ``tracking_uri`` a
    reference is a ConfigError.
    """
    items = list(spec) if isinstance(spec, list | tuple) else None
    values = items if items is not None else [spec]
    from unet3d.tracking.registry import is_model_reference, model_folder

    resolved = []
    for value in values:
        if is_run_reference(value) or is_model_reference(value):
            if tracking_uri is None:
                raise ConfigError(f"{key}: {value}: MLflow run references need a tracking URI")
            value = str(run_folder(value, tracking_uri, key) if is_run_reference(value)
                        else model_folder(value, tracking_uri, key))
        resolved.append(value)
    return resolved if items is not None else resolved[0]
