"""The engines that run the network on a batch of windows: TensorFlow, OpenVINO, ONNX Runtime.

An engine is a ``predict_fn`` of the sliding window (``unet3d.inference.sliding_window``): a
callable mapping float32 windows ``[n, h, w, d, C]`` (NumPy, axis order batch, H, W, D,
channels) to float32 probabilities ``[n, h, w, d, K]``. Everything around it (the window
tiling, Gaussian blending, flip TTA, brain-box crop, labels, post-processing) is the same
whichever engine runs, so swapping the engine changes only the arithmetic of the network itself
(``benchmarks/predict_engines.py`` measures the agreement).

- ``tensorflow``: the Keras model (``make_keras_predict_fn``), or the TF SavedModel of an export
  folder; needs the ``cpu`` (or ``gpu``) extra.
- ``openvino``: the OpenVINO IR (``.xml`` + ``.bin``) or ONNX file of an export, compiled for the
  CPU once per window shape (the batch axis stays dynamic); its inference precision follows the
  job's precision (``f32`` for float32: OpenVINO's own CPU default is bf16 wherever the CPU
  has bf16 instructions); needs the ``openvino`` extra.
- ``onnxruntime``: the ONNX file of an export on ONNX Runtime's CPU execution provider
  (float32); needs the ``onnxruntime`` extra.
- ``openvino_int8``: the export's INT8 IR (``unet3d.inference.quantize``) in OpenVINO; it
  changes the segmentation, so ``auto`` never picks it (``INEXACT_ENGINES``).

No module-level import of any engine: this module (and the served model of an export) imports
neither TensorFlow nor the others until an engine is built.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.config import INFERENCE_ENGINES
from unet3d.errors import ConfigError

log = logging.getLogger(__name__)

#: The engines that run windows (``inference.engine`` also takes ``auto``).
ENGINES: tuple[str, ...] = tuple(name for name in INFERENCE_ENGINES if name != "auto")
#: The module each engine imports.
ENGINE_MODULES = {"tensorflow": "tensorflow", "openvino": "openvino",
                  "onnxruntime": "onnxruntime", "openvino_int8": "openvino"}
#: The extra of setup.cfg that installs each engine.
ENGINE_EXTRAS = {"tensorflow": "cpu", "openvino": "openvino", "onnxruntime": "onnxruntime",
                 "openvino_int8": "openvino"}
#: The distributions whose version names an engine (the first one installed).
ENGINE_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
                        "openvino": ("openvino",), "onnxruntime": ("onnxruntime",),
                        "openvino_int8": ("openvino",)}
#: Engines that change the segmentation (an INT8 model): ``auto`` never chooses them.
INEXACT_ENGINES = ("openvino_int8",)
#: OpenVINO's ``INFERENCE_PRECISION_HINT`` for each compute dtype of the job's precision.
OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def engine_installed(name: str) -> bool:
    """Whether the engine's module can be imported here (a blocked module counts as absent)."""
    module = ENGINE_MODULES[name]
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed_engines() -> list[str]:
    """The engines installed here, in ``ENGINES`` order."""
    return [name for name in ENGINES if engine_installed(name)]


def missing_engine_message(name: str, key: str = "inference.engine") -> str:
    """One line: the engine is not installed and the extra that installs it."""
    extra, module = ENGINE_EXTRAS[name], ENGINE_MODULES[name]
    what = module if module == name else f"{module} (which runs {name})"
    return (f"{key}={name}: {what} is not installed here; install it with "
            f"pip install -e \".[{extra}]\" (or pip install \"unet3d[{extra}]\")")


def require_engine(name: str, key: str = "inference.engine") -> None:
    """Raise ConfigError (one line naming the extra) unless ``name`` is an installed engine.

    Raises:
        ConfigError: unknown engine, or not installed.
    """
    if name not in ENGINES:
        raise ConfigError(f"{key}: must be one of {', '.join(INFERENCE_ENGINES)}, got {name!r}")
    if not engine_installed(name):
        raise ConfigError(missing_engine_message(name, key))


def engine_version(name: str) -> str:
    """The installed version of an engine (``"absent"`` when not installed)."""
    from importlib import metadata

    for distribution in ENGINE_DISTRIBUTIONS[name]:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def default_threads() -> int:
    """The CPUs this process may use (the engines' thread count when none is set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _checked_output(output: Any, batch: np.ndarray) -> np.ndarray:
    result = np.asarray(output, dtype=np.float32)
    if result.ndim != 5 or result.shape[:4] != batch.shape[:4]:
        raise ValueError(f"engine returned shape {result.shape} for windows {batch.shape}")
    return result


class OpenVINOEngine:
    """Windows through OpenVINO on the CPU.

    Args:
        model_path: the IR ``.xml`` (its ``.bin`` beside it) or an ``.onnx`` file; the model
            maps float32 ``[n, h, w, d, C]`` to ``[n, h, w, d, K]``, spatial sides open.
        threads: ``INFERENCE_NUM_THREADS`` (None: the CPUs this process may use).
        precision: the compute dtype (``float32``, ``bfloat16`` or ``float16``), set as
            ``INFERENCE_PRECISION_HINT`` (``f32`` / ``bf16`` / ``f16``; an INT8 IR's
            quantized layers run in INT8 whatever it is).
        engine: the name it answers to (``openvino``, or ``openvino_int8`` for an INT8 IR).

    Raises:
        ConfigError: OpenVINO is not installed, or an unknown precision.
        CheckpointError: the file does not load (one line naming it).
    """

    engine = "openvino"

    def __init__(self, model_path: str | Path, *, threads: int | None = None,
                 precision: str = "float32", engine: str = "openvino") -> None:
        require_engine(engine)
        self.engine = engine
        import openvino as ov

        from unet3d.errors import CheckpointError

        if precision not in OPENVINO_PRECISIONS:
            raise ConfigError(f"precision: OpenVINO runs {', '.join(OPENVINO_PRECISIONS)}, got "
                              f"{precision!r}")
        self.path = Path(model_path)
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(self.path))
        except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(f"{self.path}: OpenVINO cannot read the model ({first})"
                                  ) from None
        self.threads = int(threads or default_threads())
        self.precision = precision
        self._config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
                        "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_NUM_THREADS": self.threads}
        shape = self._model.inputs[0].get_partial_shape()
        self.in_channels = int(shape[4].get_length()) if shape[4].is_static else None
        self._compiled: dict[tuple[int, ...], Any] = {}

    def _compiled_for(self, spatial: tuple[int, ...]) -> Any:
        compiled = self._compiled.get(spatial)
        if compiled is None:
            import openvino as ov

            model = self._model.clone()
            channels = -1 if self.in_channels is None else self.in_channels
            model.reshape({model.inputs[0]: ov.PartialShape([-1, *spatial, channels])})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._compiled[spatial] = compiled
            log.debug("openvino: compiled %s for windows %s (%s)", self.path.name,
                      list(spatial), self._config)
        return compiled

    def prepare(self, window: Sequence[int]) -> None:
        """Compile for windows of ``window`` sides now (e.g. while the first case is read)."""
        self._compiled_for(tuple(int(side) for side in window))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[n, h, w, d, C]`` -> float32 ``[n, h, w, d, K]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        compiled = self._compiled_for(tuple(batch.shape[1:4]))
        return _checked_output(compiled(batch)[0], batch)

    def describe(self) -> str:
        """``openvino 2026.4.1 (f32, 2 threads)``."""
        model = "INT8 model, " if self.engine == "openvino_int8" else ""
        return (f"openvino {engine_version('openvino')} ({model}"
                f"{OPENVINO_PRECISIONS[self.precision]}, {self.threads} threads)")


class OnnxRuntimeEngine:
    """Windows through ONNX Runtime's CPU execution provider (float32).

    Args:
        model_path: the ``.onnx`` file (float32 ``[n, h, w, d, C]`` -> ``[n, h, w, d, K]``).
        threads: intra-op threads (None: the CPUs this process may use).

    Raises:
        ConfigError: ONNX Runtime is not installed.
        CheckpointError: the file does not load (one line naming it).
    """

    engine = "onnxruntime"

    def __init__(self, model_path: str | Path, *, threads: int | None = None) -> None:
        require_engine("onnxruntime")
        import onnxruntime as ort

        from unet3d.errors import CheckpointError

        self.path = Path(model_path)
        self.threads = int(threads or default_threads())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.path), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph errors
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(f"{self.path}: ONNX Runtime cannot load the model ({first})"
                                  ) from None
        declared = self._session.get_inputs()[0]
        self._input = declared.name
        channels = declared.shape[-1] if declared.shape else None
        self.in_channels = channels if isinstance(channels, int) else None

    def prepare(self, window: Sequence[int]) -> None:
        """Nothing to compile: ONNX Runtime plans on the first call."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[n, h, w, d, C]`` -> float32 ``[n, h, w, d, K]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return _checked_output(self._session.run(None, {self._input: batch})[0], batch)

    def describe(self) -> str:
        """``onnxruntime 1.31.1 (fp32, 2 threads)``."""
        return f"onnxruntime {engine_version('onnxruntime')} (fp32, {self.threads} threads)"


class SavedModelEngine:
    """Windows through the TF SavedModel of an export folder (its ``serve`` endpoint).

    Args:
        path: the SavedModel folder (``keras.Model.export(format="tf_saved_model")``).

    Raises:
        ConfigError: TensorFlow is not installed.
        CheckpointError: the folder does not load.
    """

    engine = "tensorflow"

    def __init__(self, path: str | Path) -> None:
        require_engine("tensorflow")
        import tensorflow as tf

        from unet3d.errors import CheckpointError

        self.path = Path(path)
        try:
            loaded = tf.saved_model.load(str(self.path))
            self._serve = loaded.serve
        except Exception as error:  # TensorFlow raises many kinds on a bad SavedModel
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(f"{self.path}: TensorFlow cannot load the SavedModel "
                                  f"({first})") from None
        self._loaded = loaded
        self.in_channels = None

    def prepare(self, window: Sequence[int]) -> None:
        """Nothing to compile (the SavedModel's function is traced already)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[n, h, w, d, C]`` -> float32 ``[n, h, w, d, K]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return _checked_output(np.asarray(self._serve(batch)), batch)

    def describe(self) -> str:
        """``tensorflow 2.18.1 (SavedModel)``."""
        return f"tensorflow {engine_version('tensorflow')} (SavedModel)"


class KerasEngine:
    """Windows through a Keras model (``make_keras_predict_fn``: one traced ``tf.function``).

    Args:
        model: the Keras model.
        window: window sides (fixes the traced signature), or None.
        jit_compile: compile with XLA (``precision.xla``).
    """

    engine = "tensorflow"

    def __init__(self, model: Any, window: Sequence[int] | None = None,
                 jit_compile: bool = False) -> None:
        from unet3d.inference.sliding_window import make_keras_predict_fn

        self.model = model
        self._fn = make_keras_predict_fn(model, jit_compile=jit_compile, window_size=window)
        self.in_channels = None
        self.trace = getattr(self._fn, "trace", None)

    def prepare(self, window: Sequence[int]) -> None:
        """Trace the forward pass now (no model execution)."""
        if self.trace is not None:
            self.trace()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[n, h, w, d, C]`` -> float32 ``[n, h, w, d, K]``."""
        return self._fn(batch)

    def describe(self) -> str:
        """``tensorflow 2.18.1 (Keras)``."""
        return f"tensorflow {engine_version('tensorflow')} (Keras)"
