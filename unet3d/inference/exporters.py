"""Keras models to ONNX, OpenVINO IR and TF SavedModel files, each checked against the model.

The converters are the libraries' own, through ``keras.Model.export``: ``format="onnx"``
(tf2onnx's ``convert.from_function`` on the model's traced call: the ``onnx`` extra),
``format="openvino"`` (``openvino.convert_model`` on the same function: the ``openvino`` extra)
and ``format="tf_saved_model"``. Every file is exported with open batch and spatial axes
(float32 ``[None, None, None, None, C]``), so one file runs any window whose sides are multiples
of the network's input divisor.

Before converting, ``export_twin`` replaces each instance norm (Keras' ``GroupNormalization``
with one group per channel, which reshapes to 6-D groups) by ``SpatialInstanceNorm``, the same
arithmetic written on the 5-D tensor (mean and variance over the spatial axes): OpenVINO then
recognises it as one MVN operation instead of a chain of 6-D reshapes and reductions, which
made OpenVINO slower than TensorFlow (docs/deployment.md). The check below compares every file
with the original model.

``check_files`` runs each file on a random window (seeded) with its engine in float32 and
compares it to the Keras model: the largest |probability difference| must be at most the
tolerance, else ``ExportError`` names the format and the difference.

Imports TensorFlow (the models are Keras models); the engines are imported where used.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.errors import ConfigError, ExportError
from unet3d.inference.export_folder import FORMAT_PATHS

log = logging.getLogger(__name__)

#: The Python packages each format's converter needs, and the extra that installs them.
CONVERTER_MODULES = {"onnx": ("tf2onnx", "onnx"), "openvino": ("openvino",),
                     "saved_model": ("tensorflow",), "openvino_int8": ("openvino", "nncf")}
CONVERTER_EXTRAS = {"onnx": "onnx", "openvino": "openvino", "saved_model": "cpu",
                    "openvino_int8": "int8"}
#: The engine that checks each format.
CHECK_ENGINES = {"onnx": "onnxruntime", "openvino": "openvino", "saved_model": "tensorflow",
                 "openvino_int8": "openvino_int8"}


def require_converter(fmt: str, key: str = "export.formats") -> None:
    """Raise ConfigError naming the extra when the converter of ``fmt`` is not installed."""
    import importlib.util

    for module in CONVERTER_MODULES[fmt]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            extra = CONVERTER_EXTRAS[fmt]
            raise ConfigError(f"{key}: writing {fmt} needs {module}, which is not installed; "
                              f"pip install -e \".[{extra}]\"")


@contextlib.contextmanager
def float32_policy() -> Iterator[None]:
    """Build Keras models in float32 inside the block (the engines pick their own precision)."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _spatial_instance_norm_class() -> Any:
    import keras
    import tensorflow as tf

    class SpatialInstanceNorm(keras.layers.Layer):
        """Instance norm over the spatial axes of ``[N, *spatial, C]``: ``(x - mean) /
        sqrt(var + epsilon) * gamma + beta`` (Ulyanov et al. 2016), as Keras'
        ``GroupNormalization(groups=C)`` computes it, for export only."""

        def __init__(self, epsilon: float, center: bool = True, scale: bool = True,
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.epsilon, self.center, self.scale = float(epsilon), bool(center), bool(scale)

        def build(self, input_shape: Any) -> None:
            channels = (int(input_shape[-1]),)
            self.gamma = self.add_weight(shape=channels, name="gamma", initializer="ones",
                                         trainable=False) if self.scale else None
            self.beta = self.add_weight(shape=channels, name="beta", initializer="zeros",
                                        trainable=False) if self.center else None

        def call(self, inputs: Any) -> Any:
            axes = list(range(1, len(inputs.shape) - 1))
            mean = tf.reduce_mean(inputs, axis=axes, keepdims=True)
            centered = inputs - mean
            variance = tf.reduce_mean(centered * centered, axis=axes, keepdims=True)
            outputs = centered / tf.sqrt(variance + self.epsilon)
            if self.gamma is not None:
                outputs = outputs * self.gamma
            if self.beta is not None:
                outputs = outputs + self.beta
            return outputs

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "epsilon": self.epsilon, "center": self.center,
                    "scale": self.scale}

    return SpatialInstanceNorm


def _is_instance_norm(layer: Any) -> bool:
    import keras

    if not isinstance(layer, keras.layers.GroupNormalization) or layer.axis not in (-1, 4):
        return False
    channels = getattr(layer, "input", None)
    channels = channels.shape[-1] if channels is not None else None
    return channels is not None and int(layer.groups) == int(channels)


def export_twin(model: Any) -> Any:
    """``model`` with every instance norm as ``SpatialInstanceNorm`` (same weights), or
    ``model`` itself when it has none or cannot be cloned (a subclassed model)."""
    import keras

    if not any(_is_instance_norm(layer) for layer in model.layers):
        return model
    norm_class = _spatial_instance_norm_class()

    def clone(layer: Any) -> Any:
        if _is_instance_norm(layer):
            return norm_class(epsilon=layer.epsilon, center=layer.center, scale=layer.scale,
                              name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    try:
        twin = keras.models.clone_model(model, clone_function=clone)
        for layer in model.layers:
            target = twin.get_layer(layer.name)
            if _is_instance_norm(layer):
                if layer.scale:
                    target.gamma.assign(layer.gamma)
                if layer.center:
                    target.beta.assign(layer.beta)
            elif layer.weights:
                target.set_weights(layer.get_weights())
    except Exception as error:  # a model clone_model cannot rebuild: export it as it is
        log.info("export: %s kept as it is (%s)", model.name, error)
        return model
    return twin


def input_spec(model: Any) -> list[Any]:
    """The export signature: float32 ``[None, None, None, None, C]`` named ``image``."""
    import tensorflow as tf

    channels = int(model.inputs[0].shape[-1])
    return [tf.TensorSpec((None, None, None, None, channels), tf.float32, name="image")]


def write_format(model: Any, folder: Path, fmt: str) -> Path:
    """Write ``model`` in ``fmt`` under ``folder`` (``FORMAT_PATHS``); return the path.

    Raises:
        ConfigError: the converter is not installed.
        ExportError: the converter fails (one line naming the format).
    """
    require_converter(fmt)
    path = folder / FORMAT_PATHS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    keras_format = {"onnx": "onnx", "openvino": "openvino",
                    "saved_model": "tf_saved_model"}[fmt]
    try:
        with warnings_quiet():
            model.export(str(path), format=keras_format, input_signature=input_spec(model),
                         verbose=False)
    except Exception as error:  # the converters raise many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"export {fmt}: the converter failed on {model.name}: {first}"
                          ) from None
    return path


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """Silence the converters' FutureWarnings and tf2onnx's INFO lines during an export."""
    import warnings

    tf2onnx_log = logging.getLogger("tf2onnx")
    level = tf2onnx_log.level
    tf2onnx_log.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            yield
        finally:
            tf2onnx_log.setLevel(level)


def check_engine(fmt: str) -> str:
    """The engine that checks ``fmt`` (ONNX: ONNX Runtime, else OpenVINO where only it is
    installed)."""
    from unet3d.inference.engines import engine_installed

    if fmt == "onnx" and not engine_installed("onnxruntime") and engine_installed("openvino"):
        return "openvino"
    return CHECK_ENGINES[fmt]


def engine_for(path: Path, fmt: str, engine: str | None = None, threads: int | None = None,
               precision: str = "float32") -> Any:
    """The engine (``unet3d.inference.engines``) running the file ``path`` of ``fmt``.

    Args:
        path: the file (or SavedModel folder).
        fmt: its format (``onnx``, ``openvino``, ``saved_model``).
        engine: the engine to run it (None: ``check_engine(fmt)``).
        threads: the engine's threads (None: the CPUs this process may use).
        precision: OpenVINO's compute dtype.
    """
    from unet3d.inference.engines import OnnxRuntimeEngine, OpenVINOEngine, SavedModelEngine

    engine = engine or check_engine(fmt)
    if engine == "tensorflow":
        return SavedModelEngine(path)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(path, threads=threads)
    return OpenVINOEngine(path, threads=threads, precision=precision, engine=engine)


def random_window(window: Sequence[int], channels: int, seed: int = 0) -> np.ndarray:
    """float32 ``[1, h, w, d, C]`` of standard normal values (a normalised image's range)."""
    generator = np.random.default_rng(seed)
    return generator.standard_normal((1, *[int(side) for side in window], int(channels))
                                     ).astype(np.float32)


def check_files(model: Any, files: dict[str, Path], window: Sequence[int],
                tolerance: float, seed: int = 0) -> dict[str, float]:
    """The largest |probability difference| of each file to ``model`` on one random window.

    Args:
        model: the float32 Keras model the files were written from.
        files: format -> path (``write_format``).
        window: the window sides (multiples of the network's input divisor).
        tolerance: the largest difference allowed.
        seed: the random window's seed.

    Returns:
        format -> the largest difference (every one <= ``tolerance``).

    Raises:
        ExportError: ``export <format>: max |dp| <difference> > tolerance <t> ...`` for the
            first format above the tolerance.
    """
    batch = random_window(window, int(model.inputs[0].shape[-1]), seed)
    expected = np.asarray(model(batch, training=False), dtype=np.float32)
    found: dict[str, float] = {}
    for fmt, path in files.items():
        try:
            output = engine_for(path, fmt)(batch)
        except ExportError:
            raise
        except Exception as error:  # an engine that cannot run the file
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ExportError(f"export {fmt}: {path.name} does not run ({first})") from None
        difference = float(np.max(np.abs(np.asarray(output, dtype=np.float32) - expected)))
        if not difference <= tolerance:
            raise ExportError(f"export {fmt}: max |dp| {difference:.3g} > tolerance "
                              f"{tolerance:g} against the Keras model on a random "
                              f"{'x'.join(str(side) for side in window)} window ({model.name})")
        found[fmt] = difference
        log.info("export %s: %s matches the Keras model (max |dp| %.2e on a %s window)", fmt,
                 path.name, difference, "x".join(str(side) for side in window))
    return found


def export_member(model: Any, folder: Path, formats: Sequence[str], window: Sequence[int],
                  tolerance: float) -> tuple[dict[str, Path], dict[str, float]]:
    """Write ``export_twin(model)`` in every format and check each file against ``model``; on
    any failure nothing stays in ``folder``.

    Returns:
        (format -> path, format -> largest difference).

    Raises:
        ConfigError: a converter is not installed.
        ExportError: a converter fails or a file differs from the model by more than
            ``tolerance``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        twin = export_twin(model)
        files = {fmt: write_format(twin, folder, fmt) for fmt in formats}
        differences = check_files(model, files, window, tolerance)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return files, differences
