"""Logging a Keras model to MLflow with its TensorFlow flavour and a tensor signature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def log_keras_model(
    client: Any,
    tracking_uri: str,
    experiment_id: str,
    run_id: str,
    model: Any,
    example_input: Any,
    name: str = "model",
    custom_objects: Mapping[str, Any] | None = None,
    code_paths: Sequence[str] | None = None,
    pip_requirements: Sequence[str] | None = None,
) -> str:
    """Log `model` as an MLflow 3 LoggedModel linked to run `run_id`; return `models:/<id>`.

    Args:
        client: the `mlflow.MlflowClient` of the store.
        tracking_uri: the store's URI (MLflow's `log_model` reads the global URI: it is set to
            this one for the call, then restored).
        experiment_id: the run's experiment.
        run_id: the run the model is an output of.
        model: a built `keras.Model`.
        example_input: a small batch, np.ndarray (N, H, W, D, C); the model runs on it once to
            infer the signature (batch dim and every dim the model leaves open are -1).
        name: the model's name in the run.
        custom_objects: custom layers needed to load it back.
        code_paths: source folders logged with the model (e.g. the `unet3d` package).
        pip_requirements: requirements; default: the installed TensorFlow, Keras and NumPy.

    Returns:
        The model URI `models:/<model_id>`.

    Raises:
        Exception: whatever MLflow or the model raises.
    """
    import mlflow
    import mlflow.tensorflow
    import numpy as np

    example_input = np.asarray(example_input)
    example_output = model(example_input, training=False)
    example_output = np.asarray(
        example_output.numpy() if hasattr(example_output, "numpy") else example_output
    )
    signature = tensor_signature(model, example_input, example_output)
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        info = mlflow.tensorflow.log_model(
            model,
            name=name,
            signature=signature,
            custom_objects=dict(custom_objects) if custom_objects else None,
            code_paths=list(code_paths) if code_paths else None,
            pip_requirements=list(pip_requirements or default_pip_requirements()),
            model_id=logged.model_id,
            run_id=run_id,
        )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return f"models:/{info.model_id}"


def default_pip_requirements() -> list[str]:
    """Pin the installed TensorFlow/Keras/NumPy (skips MLflow's slow requirement inference)."""
    from importlib import metadata

    requirements = []
    for distribution in ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "keras", "numpy"):
        try:
            requirements.append(f"{distribution}=={metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            continue
    return requirements


def tensor_signature(model: Any, example_input: Any, example_output: Any) -> Any:
    """MLflow `ModelSignature` with batch dim -1 and every dim the model leaves open as -1.

    Args:
        model: the Keras model (its `input_shape` / `output_shape` say which dims are open).
        example_input: np.ndarray (N, ...) the model ran on.
        example_output: np.ndarray (N, ...) it returned.
    """
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
