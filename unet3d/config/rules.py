"""The rules between settings: what one key may be given the others.

Each rule raises (or returns) one line that starts with the dotted key to change. ``check_rules``
runs at the end of :func:`unet3d.config.validate`; ``head_problem`` also runs once the data
set's label convention is known (``data_problem``, from ``unet3d.modes.job.Job.check_data``).
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig

from unet3d.config.settings import Boolean, Integer, Number, OneOf, get
from unet3d.config.vocabulary import (
    CLUSTER_RESOLVERS,
    COMMUNICATIONS,
    DEFAULT_HEAD,
    DEFAULT_NUM_REGIONS,
    HEADS,
    REGION_LOSS_TARGET,
    SEGMENTATION_LOSS_TARGET,
    SYNTHETIC_DATASET_TARGET,
    UNET3D_TARGET,
)
from unet3d.errors import ConfigError


def model_head(model_cfg: Any) -> str:
    """The head of a ``model`` group: its ``head``; ``softmax`` for a group without one (a
    model of your own, docs/contracts.md). Checked by ``head_problem``."""
    return str(model_cfg.get("head") or DEFAULT_HEAD)


def model_regions(model_cfg: Any) -> int:
    """The region channels of a ``model`` group with ``head: regions``: its ``num_regions``;
    ``DEFAULT_NUM_REGIONS`` (WT, TC, ET) for a group without one. Checked by ``head_problem``."""
    regions = model_cfg.get("num_regions")
    return DEFAULT_NUM_REGIONS if regions is None else regions


def head_problem(model_cfg: Any, loss_cfg: Any, num_painted_regions: int | None = None
                 ) -> str | None:
    """What is inconsistent between the head, the loss and the data set; None when nothing.

    ``model.head=regions`` (one sigmoid per region, nnU-Net's region-based training) needs the
    region loss (``loss=regions``) and the region loss needs ``model.head=regions``; with the
    data set's convention known (``data_problem``), ``model.num_regions``
    (``model_regions``) must equal its painted regions. The head and ``num_regions`` of any
    model group (the U-Net's or yours) are checked here.

    Args:
        model_cfg: the ``model`` group; loss_cfg: the ``loss`` group (mappings).
        num_painted_regions: ``len(unet3d.data.layouts.regions.painted_regions(convention))``
            when the data set's convention is known.

    Returns:
        One line starting with the key to change, or None.
    """
    head = model_head(model_cfg)
    if head not in HEADS:
        return f"model.head: must be one of {', '.join(HEADS)}, got {head!r}"
    regions = model_regions(model_cfg)
    if head == "regions" and (isinstance(regions, bool) or not isinstance(regions, int)
                              or regions < 1):
        return f"model.num_regions: must be an integer >= 1, got {regions!r}"
    loss_target = loss_cfg.get("_target_")
    if head == "regions" and loss_target == SEGMENTATION_LOSS_TARGET:
        return ("loss: model.head=regions predicts one sigmoid per region; use loss=regions "
                "(BCE + soft Dice per region) instead of the class loss")
    if loss_target == REGION_LOSS_TARGET and head != "regions":
        return "model.head: loss=regions needs model.head=regions, got model.head=softmax"
    if head == "regions" and num_painted_regions is not None:
        if regions != num_painted_regions:
            return (f"model.num_regions: the data set paints {num_painted_regions} regions, "
                    f"got {regions}")
    return None


def data_problem(model_cfg: Any, loss_cfg: Any, convention: Any,
                 num_painted_regions: int) -> str | None:
    """What the model's settings and the data set's label convention disagree on; None if
    nothing. Checked once the data set is read (``unet3d.modes.job.Job.check_data``).

    Args:
        model_cfg: the ``model`` group; loss_cfg: the ``loss`` group.
        convention: the data set's ``unet3d.data.layouts.convention.LabelConvention`` (``name``,
            ``num_classes``, ``values``).
        num_painted_regions: ``len(unet3d.data.layouts.regions.painted_regions(convention))``.

    Returns:
        One line starting with the key to change (``model.num_regions`` of a region head,
        ``model.num_classes``), or None.
    """
    if model_head(model_cfg) == "regions":
        problem = head_problem(model_cfg, loss_cfg, num_painted_regions)
        if problem is not None:
            return problem
    wanted = int(convention.num_classes)
    if int(model_cfg["num_classes"]) != wanted:
        values = ", ".join(str(value) for value in convention.values)
        return (f"model.num_classes: the data set {convention.name} has {wanted} classes (label "
                f"values {values}), the model {model_cfg['num_classes']}: pass "
                f"model.num_classes={wanted}")
    return None


def registry_problem(name: Any, alias: Any) -> str | None:
    """What is wrong with ``tracking.register_model`` / ``tracking.model_alias``; None if nothing.

    A name is a non-empty string without ``@`` and ``/`` (it becomes ``models:/<name>@...``);
    an alias follows MLflow's rule (letters, digits, ``_``, ``-``; not ``latest`` or
    ``v<number>``, which MLflow reserves) and needs a name.
    """
    if name is not None and (not isinstance(name, str) or not name.strip() or "@" in name
                             or "/" in name):
        return f"tracking.register_model: must be null or a model name without '@' and '/', " \
               f"got {name!r}"
    if alias is None:
        return None
    if name is None:
        return "tracking.model_alias: needs tracking.register_model=<name>"
    if (not isinstance(alias, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias)
            or alias == "latest" or re.fullmatch(r"[vV]\d+", alias)):
        return (f"tracking.model_alias: must be null or an alias of letters, digits, '_' and "
                f"'-' (not 'latest' or v<number>), got {alias!r}")
    return None


def check_rules(cfg: DictConfig, mode: str) -> None:
    """The rules between keys (each names the key to change)."""
    num_folds, fold = get(cfg, "num_folds"), get(cfg, "fold")
    if fold >= num_folds:
        raise ConfigError(f"fold: must be in [0, num_folds={num_folds}), got {fold}")
    if mode == "cross_validate":
        _check_cross_validation_folds(get(cfg, "mode.folds"), num_folds)
    if get(cfg, "precision.policy") == "auto":  # the probe's margin, only auto reads it
        if get(cfg, "precision.min_speedup") is None:
            raise ConfigError("precision.min_speedup: missing; precision.policy=auto needs it "
                              "(choose precision=auto: conf/precision/auto.yaml)")
        Number(0.0).check(cfg, "precision.min_speedup")
    _check_deep_supervision(cfg)
    # model.num_classes is checked against the data set's label convention once it is read
    # (data_problem).
    classes = get(cfg, "model.num_classes")
    if get(cfg, "model._target_") == UNET3D_TARGET:
        base, largest = get(cfg, "model.base_filters"), get(cfg, "model.max_filters")
        if base is not None and largest is not None and largest < base:
            raise ConfigError(
                f"model.max_filters: must be >= model.base_filters={base}, got {largest}")
        if get(cfg, "model.norm") == "group" and base is not None and base % min(16, base):
            raise ConfigError(
                f"model.base_filters: group norm needs a multiple of 16, got {base}")
    if get(cfg, "loss._target_") == SEGMENTATION_LOSS_TARGET:
        loss_classes = get(cfg, "loss.num_classes")
        if loss_classes is not None and loss_classes != classes:
            raise ConfigError(
                f"loss.num_classes: must equal model.num_classes={classes}, got {loss_classes}")
    for problem in (head_problem(cfg.model, cfg.loss),
                    registry_problem(get(cfg, "tracking.register_model"),
                                     get(cfg, "tracking.model_alias"))):
        if problem is not None:
            raise ConfigError(problem)
    if get(cfg, "data._target_") == SYNTHETIC_DATASET_TARGET:
        cases = get(cfg, "data.synthetic.num_cases")
        if cases is not None and cases < num_folds:
            raise ConfigError(
                f"data.synthetic.num_cases: must be >= num_folds={num_folds}, got {cases}")
        from unet3d.config.synthetic_options import options_from

        options_from(get(cfg, "data.synthetic"))  # the appearance settings (data=synthetic_hard)
    strategy = get(cfg, "strategy.name")
    if strategy == "horovod" and get(cfg, "precision.xla"):
        raise ConfigError(
            "precision.xla: XLA cannot compile Horovod's collective ops; use "
            "precision.xla=false or strategy=mirrored/multi_worker"
        )
    if strategy == "multi_worker":
        OneOf(CLUSTER_RESOLVERS).check(cfg, "strategy.cluster_resolver")
        if get(cfg, "strategy.communication") is not None:
            OneOf(COMMUNICATIONS).check(cfg, "strategy.communication")
    if strategy == "horovod" and get(cfg, "strategy.divide_steps_by_world_size") is not None:
        Boolean().check(cfg, "strategy.divide_steps_by_world_size")
    if mode == "benchmark" and get(cfg, "benchmark.target") == "runner":
        Integer(minimum=1).check(cfg, "benchmark.rounds")


def _check_cross_validation_folds(folds: Any, num_folds: int) -> None:
    """``mode.folds`` of ``mode=cross_validate``: null (every fold) or distinct folds."""
    if folds is None:
        return
    if (not isinstance(folds, list) or not folds or len(set(folds)) != len(folds)
            or not all(isinstance(fold, int) and not isinstance(fold, bool)
                       and 0 <= fold < num_folds for fold in folds)):
        raise ConfigError(f"mode.folds: expected null or distinct folds in [0, num_folds="
                          f"{num_folds}), got {folds!r}")


def _check_deep_supervision(cfg: DictConfig) -> None:
    """``training.deep_supervision_levels`` / ``_weights`` against the U-Net's decoder.

    The built-in U-Net has ``model.num_levels - 1`` decoder stages; with levels null every stage
    is supervised, and the weights (when given) are one per supervised resolution. A model of
    your own is checked once built (``unet3d.training.deep_supervision``).
    """
    if not get(cfg, "training.deep_supervision") or get(cfg, "model._target_") != UNET3D_TARGET:
        return
    stages = get(cfg, "model.num_levels") - 1
    if stages < 2:
        raise ConfigError(f"training.deep_supervision: needs model.num_levels >= 3 (a decoder "
                          f"stage below full resolution), got {stages + 1}")
    levels = get(cfg, "training.deep_supervision_levels")
    if levels is not None and levels > stages:
        raise ConfigError(f"training.deep_supervision_levels: must be in [1, {stages}] "
                          f"(model.num_levels - 1), got {levels}")
    outputs = stages if levels is None else levels
    weights = get(cfg, "training.deep_supervision_weights")
    if weights is not None and len(weights) != outputs:
        raise ConfigError(f"training.deep_supervision_weights: needs {outputs} weights (full "
                          f"resolution first), got {weights}")
