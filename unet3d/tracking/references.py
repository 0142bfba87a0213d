"""MLflow references as the model source of evaluate and predict: ``runs:/`` and ``models:/``.

A job's MLflow run carries its output dir (tag ``output_dir``), and the parent run of a
cross-validation sweep its sweep dir (tag ``unet3d.sweep_dir``). ``runs:/<run id>`` in
``checkpoint=`` or ``predict.checkpoint=`` is replaced by that folder, which then resolves like
any run dir or sweep dir (its newest checkpoint; every fold of a sweep = an ensemble). A version
of the Model Registry, ``models:/<name>@<alias>`` or ``models:/<name>/<version>``, resolves
through the run it was registered from (version tag ``unet3d.run_id``, else its ``run_id``;
registration: ``unet3d.serving.registration``), and ``models:/<logged model id>`` through the
logged model's source run. The folder must exist on this machine: the checkpoints live there,
not in MLflow. Reading only: nothing here writes to the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unet3d.config.settings import MODEL_REFERENCE_PREFIX, RUN_REFERENCE_PREFIX
from unet3d.errors import CheckpointError, ConfigError

#: Tags that name a run's folder: a sweep's parent run first, then a job's run.
FOLDER_TAGS = ("unet3d.sweep_dir", "output_dir")
#: Tag of a registered version: the run whose folder holds its checkpoints.
RUN_TAG = "unet3d.run_id"


def is_run_reference(value: Any) -> bool:
    """True for a string of the form ``runs:/...``."""
    return isinstance(value, str) and value.startswith(RUN_REFERENCE_PREFIX)


def is_model_reference(value: Any) -> bool:
    """True for a string of the form ``models:/...``."""
    return isinstance(value, str) and value.startswith(MODEL_REFERENCE_PREFIX)


def is_reference(value: Any) -> bool:
    """True for a ``runs:/`` or ``models:/`` reference."""
    return is_run_reference(value) or is_model_reference(value)


def run_id_of(reference: str, key: str) -> str:
    """The run id of ``runs:/<run id>[/...]``; ConfigError naming ``key`` when it is empty."""
    run_id = reference[len(RUN_REFERENCE_PREFIX):].strip("/").split("/", 1)[0]
    if not run_id:
        raise ConfigError(f"{key}: {reference!r}: expected runs:/<MLflow run id>")
    return run_id


def parse_model_reference(reference: str, key: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>@<alias>`` -> (name, alias, None); ``models:/<name>/<version>`` ->
    (name, None, version); ``models:/<logged model id>`` -> (id, None, None).

    Raises:
        ConfigError: naming ``key``, for an empty name, alias or version.
    """
    body = reference[len(MODEL_REFERENCE_PREFIX):].strip("/")
    expected = f"expected {MODEL_REFERENCE_PREFIX}<name>@<alias> or {MODEL_REFERENCE_PREFIX}" \
               "<name>/<version>"
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        if not name or not alias:
            raise ConfigError(f"{key}: {reference!r}: {expected}")
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        if not name or not version.isdigit():
            raise ConfigError(f"{key}: {reference!r}: {expected} (version: a number)")
        return name, None, version
    if not body:
        raise ConfigError(f"{key}: {reference!r}: {expected}")
    return body, None, None


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


def model_version_of(client: Any, reference: str, key: str, tracking_uri: str) -> Any:
    """The registered ``ModelVersion`` that ``reference`` names (alias or version number).

    Raises:
        ConfigError: a malformed reference.
        CheckpointError: one line naming ``key``: no such registered model, alias or version
            in ``tracking_uri`` (listing the model's aliases and versions).
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_reference(reference, key)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise CheckpointError(
            f"{key}: {reference}: no registered model {name!r} in {tracking_uri} "
            "(register one with tracking.register_model=<name>)"
        ) from None
    known_aliases = sorted(getattr(model, "aliases", {}) or {})
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version))
    except MlflowException:
        quoted = name.replace("'", "\\'")
        versions = sorted(int(item.version) for item in
                          client.search_model_versions(f"name = '{quoted}'"))
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise CheckpointError(
            f"{key}: {reference}: registered model {name!r} has no {what} (aliases: "
            f"{', '.join(known_aliases) or 'none'}; versions: "
            f"{', '.join(map(str, versions)) or 'none'})"
        ) from None


def model_run_id(reference: str, tracking_uri: str, key: str) -> str:
    """The id of the MLflow run behind ``reference`` (a registered version or a logged model).

    Raises:
        ConfigError, CheckpointError: as ``model_version_of``; also a version or logged model
            without a source run.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    name, alias, version = parse_model_reference(reference, key)
    if alias is None and version is None:  # models:/<logged model id>
        try:
            run_id = client.get_logged_model(name).source_run_id
        except MlflowException:
            raise CheckpointError(
                f"{key}: {reference}: no logged model {name!r} in {tracking_uri} (expected "
                f"{MODEL_REFERENCE_PREFIX}<name>@<alias> or {MODEL_REFERENCE_PREFIX}<name>/"
                "<version> of a registered model)"
            ) from None
    else:
        model_version = model_version_of(client, reference, key, tracking_uri)
        run_id = (model_version.tags or {}).get(RUN_TAG) or model_version.run_id
    if not run_id:
        raise CheckpointError(f"{key}: {reference}: the model has no source run")
    return str(run_id)


def model_folder(reference: str, tracking_uri: str, key: str) -> Path:
    """The output dir (or sweep dir) of the run behind a ``models:/`` reference.

    Raises:
        ConfigError, CheckpointError: see ``model_run_id`` and ``run_folder`` (the folder
            must exist here).
    """
    run_id = model_run_id(reference, tracking_uri, key)
    try:
        return run_folder(f"{RUN_REFERENCE_PREFIX}{run_id}", tracking_uri, key)
    except CheckpointError as error:
        raise CheckpointError(f"{key}: {reference} (run {run_id}): "
                              f"{str(error).split(': ', 2)[-1]}") from None


def resolve_run_references(spec: Any, tracking_uri: str | None, key: str) -> Any:
    """``spec`` with every ``runs:/`` and ``models:/`` item replaced by its run's folder.

    ``spec`` is one value or a list; other items pass through unchanged; a replaced item is a
    string. Without a ``tracking_uri`` a reference is a ConfigError.

    Raises:
        ConfigError, CheckpointError: see ``run_folder`` and ``model_folder``.
    """
    items = list(spec) if isinstance(spec, list | tuple) else None
    resolved = []
    for value in items if items is not None else [spec]:
        if is_reference(value):
            if tracking_uri is None:
                raise ConfigError(f"{key}: {value}: MLflow run references need a tracking URI")
            value = str(run_folder(value, tracking_uri, key) if is_run_reference(value)
                        else model_folder(value, tracking_uri, key))
        resolved.append(value)
    return resolved if items is not None else resolved[0]
