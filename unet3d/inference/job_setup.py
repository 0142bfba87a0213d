"""What a job (evaluate, predict, benchmark) segments with, from its config: the model source,
its labeler, its engine members and its predictor.

A checkpoint spec (``checkpoint=`` / ``predict.checkpoint=``) names either trained runs
(a checkpoint, a run dir, a sweep dir, ``runs:/``, ``models:/``, or a list) or one export
folder of ``mode=export`` (``unet3d_export.json``). Either way the job gets a
``ModelSource`` (``model_source``), the labeler of the members' outputs into the data set's
labels (``job_labeler`` / ``source_labeler``: from the runs' records, or from the export's),
one engine per member in ``inference.engine`` (``source_members``,
``unet3d.inference.engine_setup``; the choice logged and recorded on the MLflow run), and the
``EnsemblePredictor`` with the ``inference`` group's settings (``job_predictor``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def job_labeler(cfg: DictConfig, prefixes: Any, convention: Any) -> tuple[Any, str]:
    """The labeler of the checkpoints' outputs into the labels of ``convention``.

    Returns:
        ``(labeler, head)``: the labeler and the head the members were trained with (the
        predictor's background depends on it: ``job_predictor``).

    Args:
        cfg: the job config (``inference.region_threshold``).
        prefixes: the checkpoints (their runs record the convention and head they learnt).
        convention: the ``LabelConvention`` of the data set being segmented.

    Raises:
        CheckpointError: members trained on other conventions or heads.
        ConfigError: the model's classes cannot be written in ``convention``.
    """
    from unet3d.inference.labels import make_labeler
    from unet3d.inference.models import trained_labels

    trained, head = trained_labels(prefixes)
    threshold = float(cfg.inference.region_threshold)
    return make_labeler(trained, convention, head=head, threshold=threshold), head


def job_predictor(cfg: DictConfig, models: Any, jit_compile: bool, head: str | None = None,
                  input_divisor: int | None = None) -> Any:
    """The ``EnsemblePredictor`` of ``models`` with the ``inference`` settings of ``cfg``.

    The number of output channels is the members' (their recorded network), not the job's
    ``model.num_classes``: a model of another convention is translated afterwards.

    Args:
        cfg: the job config (``inference``, ``data.crop_size``).
        models: one Keras model or engine (``unet3d.inference.engines``), or a list of them.
        jit_compile: ``precision.xla``.
        head: the members' head (``trained_labels``); None: the job's ``model.head``.
        input_divisor: the members' input divisor (``inference.single_window``); None: the
            job's ``model`` group's.

    Raises:
        CheckpointError: the members give different numbers of output channels.
    """
    from unet3d.config import model_head
    from unet3d.config.settings import input_divisor as divisor_of
    from unet3d.errors import CheckpointError
    from unet3d.inference.ensemble import EnsemblePredictor

    members = models if isinstance(models, list | tuple) else [models]
    channels = {int(getattr(member, "num_classes", None) or member.output_shape[-1])
                for member in members}
    if len(channels) != 1:
        raise CheckpointError(f"the ensemble's members give {sorted(channels)} output "
                              "channels; they must all give the same")
    # A region (sigmoid) head has no background channel: outside the brain box every region
    # probability is 0.
    head = head or model_head(cfg.model)
    background = None if head == "regions" else 0
    return EnsemblePredictor.from_config(
        models, cfg.inference, crop_size=cfg.data.crop_size, num_classes=channels.pop(),
        jit_compile=jit_compile, background_class=background,
        input_divisor=input_divisor or divisor_of(cfg.model))


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
        return job_labeler(cfg, source.prefixes, convention)
    head = source.export.head
    return labeler_of(source.export.convention, convention, head=head,
                      threshold=float(cfg.inference.region_threshold)), head


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
