"""The members that run the windows of evaluate and predict, in the engine ``inference.engine``.

``ModelSource`` is what a job segments with: checkpoint prefixes (a run, a sweep, ``runs:/``,
``models:/``) or an export folder (``mode=export``). ``build_members`` returns one engine per
member (``unet3d.inference.engines``) and the ``EngineChoice``:

- ``tensorflow``: the checkpoints' Keras models (``load_ensemble``, the job's precision), or the
  export's SavedModels;
- ``openvino`` / ``onnxruntime``: the export's files; from checkpoints, the float32 Keras models
  are converted at start (``unet3d.inference.exporters``: the same converters and the same
  check as ``mode=export``, on a small window) into a temporary folder;
- ``auto``: the fastest of the engines that can run the source here (``engine_choice``).

OpenVINO computes in the job's precision (``runtime.precision.compute_dtype``; float32 without a
runtime, as in the served model); ONNX Runtime in float32.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet3d.errors import CheckpointError, ConfigError
from unet3d.inference.engines import (
    ENGINES,
    INEXACT_ENGINES,
    engine_installed,
    engine_version,
    require_engine,
)

log = logging.getLogger(__name__)

#: The format each engine runs when a checkpoint is converted at start.
CONVERTED_FORMATS = {"openvino": "openvino", "onnxruntime": "onnx"}
#: The window side of the conversion check at start (a multiple of the input divisor).
CHECK_SIDE = 32


@dataclass
class ModelSource:
    """What a job segments with: checkpoint prefixes or an export folder.

    Attributes:
        prefixes: checkpoint prefixes (empty for an export).
        export: the export folder (``unet3d.inference.export_folder.ExportFolder``) or None.
        model_cfg: the job's ``model`` group (fallback settings of unrecorded runs).
    """

    prefixes: list[str] = field(default_factory=list)
    export: Any = None
    model_cfg: Any = None

    @property
    def ids(self) -> list[str]:
        """What the prediction records as its models: prefixes, or the export's members."""
        if self.export is None:
            return list(self.prefixes)
        return [f"{self.export.path}:{member.name}" for member in self.export.members]

    def member_settings(self) -> list[dict[str, Any]]:
        """Each member's model settings (recorded, else the job's ``model`` group)."""
        if self.export is not None:
            return [dict(member.model) for member in self.export.members]
        from unet3d.inference.models import member_model_settings

        return [member_model_settings(self.model_cfg, prefix) for prefix in self.prefixes]

    def input_divisor(self) -> int:
        """The largest input divisor of the members (window sides must be multiples)."""
        if self.export is not None:
            return self.export.input_divisor
        from unet3d.config.settings import input_divisor

        return max(input_divisor(settings) for settings in self.member_settings())

    def network(self) -> str:
        """The first member's network, as the engine probe cache keys it."""
        settings = self.member_settings()[0]
        return json.dumps({key: settings[key] for key in sorted(settings)}, default=str)

    def candidates(self) -> list[str]:
        """The engines ``auto`` chooses from here, in ``ENGINES`` order.

        Never an engine that changes the segmentation (``INEXACT_ENGINES``: the INT8 IR).
        An export: every installed engine with a format in the folder. Checkpoints:
        TensorFlow and OpenVINO (converted at start in seconds); not ONNX Runtime, whose
        converter (tf2onnx) takes minutes on the reference network: export once instead
        (``inference.engine=onnxruntime`` on a checkpoint still converts, as asked).
        """
        if self.export is not None:
            return [name for name in ENGINES if name not in INEXACT_ENGINES
                    and engine_installed(name) and self.export.engine_format(name)]
        return [name for name in ENGINES if name not in (*INEXACT_ENGINES, "onnxruntime")
                and engine_installed(name)]


def compute_dtype(runtime: Any) -> str:
    """The job's compute dtype (float32 without a runtime)."""
    precision = getattr(runtime, "precision", None)
    return str(getattr(precision, "compute_dtype", None) or "float32")


class _Builder:
    """Builds (and keeps) each engine's members of one source."""

    def __init__(self, source: ModelSource, runtime: Any, threads: int | None,
                 scratch: Path, jit_compile: bool) -> None:
        self.source, self.runtime, self.threads = source, runtime, threads
        self.scratch, self.jit_compile = scratch, jit_compile
        self.precision = compute_dtype(runtime)
        self.built: dict[str, list[Any]] = {}
        self._float32_models: list[Any] | None = None

    def members(self, name: str) -> list[Any]:
        if name not in self.built:
            self.built[name] = (self._from_export(name) if self.source.export is not None
                                else self._from_checkpoints(name))
        return self.built[name]

    def first(self, name: str) -> Any:
        return self.members(name)[0]

    def _from_export(self, name: str) -> list[Any]:
        from unet3d.inference.exporters import engine_for

        export = self.source.export
        fmt = export.engine_format(name)
        if fmt is None:
            raise CheckpointError(
                f"export folder {export.path}: inference.engine={name} needs "
                f"{' or '.join(_formats_of(name))}, the folder has {', '.join(export.formats)} "
                "(export it again with export.formats=[...])")
        members = []
        for path in export.member_paths(fmt):
            engine = engine_for(path, fmt, name, self.threads, self.precision)
            engine.num_classes = export.num_classes
            members.append(engine)
        return members

    def _from_checkpoints(self, name: str) -> list[Any]:
        from unet3d.inference.engines import KerasEngine

        if name == "tensorflow":
            from unet3d.inference.models import load_ensemble

            models = load_ensemble(self.source.model_cfg, self.source.prefixes, self.runtime)
            engines = []
            for model in models:
                engine = KerasEngine(model, jit_compile=self.jit_compile)
                engine.num_classes = int(model.output_shape[-1])
                engines.append(engine)
            return engines
        return self._converted(name)

    def _converted(self, name: str) -> list[Any]:
        """Convert the float32 Keras models to the engine's format, checked, then load them."""
        from unet3d.inference.exporters import engine_for, export_member, float32_policy
        from unet3d.inference.models import load_ensemble

        if self._float32_models is None:
            with float32_policy():
                self._float32_models = load_ensemble(self.source.model_cfg,
                                                     self.source.prefixes, None)
        fmt = CONVERTED_FORMATS[name]
        side = max(CHECK_SIDE, self.source.input_divisor())
        engines = []
        for index, model in enumerate(self._float32_models):
            folder = self.scratch / f"{name}-member-{index}"
            files, differences = export_member(model, folder, [fmt], (side,) * 3, 1e-4)
            log.info("converted %s to %s (max |dp| %.1e vs Keras)", self.source.prefixes[index],
                     fmt, differences[fmt])
            engine = engine_for(files[fmt], fmt, name, self.threads, self.precision)
            engine.num_classes = int(model.output_shape[-1])
            engines.append(engine)
        return engines


def _formats_of(engine: str) -> tuple[str, ...]:
    from unet3d.inference.export_folder import ENGINE_FORMATS

    return ENGINE_FORMATS[engine]


def build_members(inference: Any, source: ModelSource, *, runtime: Any, window: Sequence[int],
                  jit_compile: bool = False, cache: str | Path | None = None,
                  scratch: Path | None = None) -> tuple[list[Any], Any]:
    """One engine per member of ``source`` in the engine ``inference.engine`` asks for.

    Args:
        inference: the ``inference`` section (``engine``, ``engine_threads``,
            ``engine_reprobe``; absent keys: tensorflow, the CPUs this process may use, false).
        source: the checkpoints or the export folder.
        runtime: the job's runtime (its precision and strategy scope), or None.
        window: the sliding window's sides (the probe window is half of it).
        jit_compile: XLA for the TensorFlow engine (``precision.xla``).
        cache: the probe cache of ``auto`` (``inference.engine_cache``), or None.
        scratch: where checkpoints converted at start are written (a temporary folder when
            None; kept for the life of the process).

    Returns:
        (engines, ``EngineChoice``).

    Raises:
        ConfigError: the engine is not installed (one line naming the extra), or no engine
            can run the source.
        CheckpointError: the export has no file for the engine, or a file is damaged.
        ExportError: a conversion at start differs from the Keras model.
    """
    from unet3d.inference.engine_choice import choose_engine, probe_window

    requested = str(inference.get("engine") or "tensorflow")
    if requested != "auto":
        require_engine(requested)
        if source.export is None and requested in INEXACT_ENGINES:
            raise ConfigError(f"inference.engine={requested}: runs the INT8 model of an export "
                              "folder, and this job names checkpoints; export one first "
                              "(mode=export export.formats=[openvino,openvino_int8] ...) and "
                              "name the export folder as the checkpoint")
        if source.export is None and requested == "onnxruntime":
            from unet3d.inference.exporters import require_converter

            require_converter("onnx", key="inference.engine=onnxruntime (converting the "
                                          "checkpoint)")
    candidates = source.candidates() if requested == "auto" else [requested]
    if not candidates:
        raise ConfigError("inference.engine=auto: no engine can run this model here; install "
                          "one: pip install -e \".[openvino]\" (or [onnxruntime], [cpu])")
    if scratch is None:
        scratch = Path(tempfile.mkdtemp(prefix="unet3d-engines-"))
    threads = inference.get("engine_threads")
    builder = _Builder(source, runtime, threads, scratch, jit_compile)
    channels = _input_channels(source)
    choice = choose_engine(
        requested, candidates, builder.first,
        window=probe_window(window, source.input_divisor()), channels=channels,
        network=source.network(), versions=engine_versions(),
        threads=int(threads or _default_threads()), cache=cache,
        reprobe=bool(inference.get("engine_reprobe", False)))
    log.info("%s", choice.line())
    members = builder.members(choice.engine)
    return members, choice


def engine_versions() -> dict[str, str]:
    """The installed version of each engine's package (``openvino_int8`` is ``openvino``)."""
    return {name: engine_version(name) for name in ENGINES if name not in INEXACT_ENGINES}


def _input_channels(source: ModelSource) -> int:
    if source.export is not None:
        return int(source.export.record["input"]["channels"])
    return int(source.member_settings()[0].get("in_channels") or 4)


def _default_threads() -> int:
    from unet3d.inference.engines import default_threads

    return default_threads()
