"""What evaluate and predict segment with: the model source, its labels and its engine members.

A checkpoint spec (``checkpoint=`` / ``predict.checkpoint=``) names either trained runs
(a checkpoint, a run dir, a sweep dir, ``runs:/``, ``models:/``, or a list) or one export
folder of ``mode=export`` (``unet3d_export.json``). Either way the job gets a
``ModelSource``, the labeler of the members' outputs into the data set's labels (from the
runs' records, or from the export's), and one engine per member in ``inference.engine``
(``unet3d.inference.engine_setup``), the choice logged and recorded on the MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def region_threshold(cfg: DictConfig) -> float:
    """The probability above which a region head's voxel is in a region (``0.5`` unless
    ``inference.region_threshold`` is set)."""
    return float(cfg.inference.get("region_threshold") or 0.5)


def make_labeler(cfg: DictConfig, prefixes: Any, convention: Any) -> tuple[Any, str]:
    """The labeler of the checkpoints' outputs into the labels of ``convention``.

    Returns:
        ``(labeler, head)``: the labeler and the head the members were trained with (the
        predictor's background depends on it: ``make_predictor``).

    Args:
        cfg: the job config (``inference.region_threshold`` when set).
        prefixes: the checkpoints (their runs record the convention and head they learnt).
        convention: the ``LabelConvention`` of the data set being segmented.

    Raises:
        CheckpointError: members trained on other conventions or heads.
        ConfigError: the model's classes cannot be written in ``convention``.
    """
    from unet3d.inference.labels import make_labeler as labeler_of
    from unet3d.inference.models import trained_labels

    trained, head = trained_labels(prefixes)
    return labeler_of(trained, convention, head=head, threshold=region_threshold(cfg)), head


def model_source(cfg: DictConfig, spec: Any, fold: int | None, key: str) -> Any:
    """The ``ModelSource`` of a checkpoint spec: an export folder, else checkpoint prefixes.

    Raises:
        CheckpointError: a damaged export folder, or no usable checkpoint.
        ConfigError: the spec names nothing usable.
    """
    from unet3d.inference.checkpoints import job_model_checkpoints
    from unet3d.inference.engine_setup import ModelSource
    from unet3d.inference.export_folder import export_in

    export = export_in(spec)
    if export is not None:
        log.info("%s: export folder of %d member(s), formats %s", export.path,
                 len(export.members), ", ".join(export.formats))
        return ModelSource(export=export, model_cfg=cfg.model)
    prefixes = job_model_checkpoints(cfg, spec, fold=fold, key=key)
    return ModelSource(prefixes=prefixes, model_cfg=cfg.model)


def source_labeler(cfg: DictConfig, source: Any, convention: Any) -> tuple[Any, str]:
    """``(labeler, head)`` of the source's outputs into the labels of ``convention``.

    Raises:
        CheckpointError: members trained on other conventions or heads.
        ConfigError: the model's classes cannot be written in ``convention``.
    """
    from unet3d.inference.labels import make_labeler as labeler_of

    if source.export is None:
        return make_labeler(cfg, source.prefixes, convention)
    head = source.export.head
    return labeler_of(source.export.convention, convention, head=head,
                      threshold=region_threshold(cfg)), head


def engine_cache(cfg: DictConfig) -> Path:
    """``inference.engine_cache``, else ``<paths.data_dir>/engine_probe.json`` (the user's
    ``~/.cache/unet3d/engine_probe.json`` where ``paths.data_dir`` does not resolve)."""
    from omegaconf.errors import OmegaConfBaseException

    from unet3d.inference.engine_choice import CACHE_FILE, USER_CACHE

    chosen = cfg.inference.get("engine_cache")
    if chosen:
        return Path(str(chosen)).expanduser()
    try:
        data_dir = cfg.paths.data_dir if cfg.get("paths") is not None else None
    except OmegaConfBaseException:
        data_dir = None
    return Path(str(data_dir)).expanduser() / CACHE_FILE if data_dir else USER_CACHE.expanduser()


def source_members(cfg: DictConfig, source: Any, runtime: Any, tracker: Any) -> list[Any]:
    """One engine per member in ``inference.engine``; the choice logged and on the run.

    Raises:
        ConfigError: the engine is not installed (naming its extra).
        CheckpointError: the export lacks the engine's format or a file is damaged.
        ExportError: a conversion at start differs from the Keras model.
    """
    from unet3d.inference.engine_setup import build_members
    from unet3d.inference.ensemble import window_size

    precision = getattr(runtime, "precision", None)
    members, choice = build_members(
        cfg.inference, source, runtime=runtime,
        window=window_size(cfg.inference, cfg.data.crop_size),
        jit_compile=bool(getattr(precision, "xla", False)), cache=engine_cache(cfg))
    if tracker is not None:
        tracker.log_params(choice.params())
    return members
