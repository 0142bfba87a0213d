"""The one home of every setting's type and allowed values; validation once, at start.

Hydra composes ``conf/`` (its YAML files hold the default values) and rejects unknown groups,
options and keys. This package holds the rest of what a setting is:

- the vocabularies (``NORMS``, ``LOSSES``, ...): every list of allowed values, which the
  modules import from here;
- ``SETTINGS``: the framework's keys, each with its type and range or allowed values
  (``unet3d.config.settings``; the ``data.augmentation`` keys: ``unet3d.config.augmentation``);
- ``MODE_SETTINGS``: the keys that only one mode reads;
- ``COMPONENT_ARGUMENTS``: the arguments of the built-in components (the U-Net, the
  segmentation loss, the learning-rate schedule, the synthetic and BraTS data sets), keyed by
  their ``_target_``. A component of the user's own is checked for the framework keys of its
  group only (``docs/contracts.md``); its arguments are its own business.

``validate`` checks a composed config once, before any heavy work, and raises ``ConfigError``
with one line that starts with the dotted key. Neither it nor this package imports
TensorFlow or the user's components, so ``--help``, ``--cfg job`` and config errors stay
instant. ``unet3d.config.components`` builds a component from its group.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig

from unet3d.config.augmentation import AUGMENTATION_SETTINGS, check_unknown_keys
from unet3d.config.settings import (
    Boolean,
    BooleanOrAuto,
    ExistingPath,
    Integer,
    Nullable,
    Number,
    OneOf,
    Setting,
    Sides,
    Target,
    Text,
    get,
)
from unet3d.errors import ConfigError

# ---- vocabularies: every list of allowed values lives here, modules import it -----------------

MODES = ("train", "evaluate", "train_and_evaluate", "predict", "benchmark", "postprocess",
         "cross_validate")
TRAINING_MODES = ("train", "train_and_evaluate")
DEVICE_TYPES = ("auto", "cpu", "gpu", "mlu")
STRATEGIES = ("auto", "mirrored", "multi_worker", "horovod")
CLUSTER_RESOLVERS = ("tf_config", "slurm")
#: Collective communication of strategy=multi_worker.
COMMUNICATIONS = ("auto", "ring", "nccl")
#: Keras dtype policies of ``precision.policy``: ``auto`` the fastest on this host
#: (unet3d.runtime.precision_auto), ``mixed`` mixed_bfloat16 on CPU / mixed_float16 on GPU/MLU.
PRECISION_POLICIES = ("auto", "float32", "mixed", "mixed_bfloat16", "mixed_float16")
#: Normalisations of the U-Net's conv units (``none``: no norm, the convolutions get a bias).
NORMS = ("instance", "group", "batch", "none")
#: Output heads (``model.head``): a softmax over the classes, or one sigmoid per evaluation
#: region (region-based training, nnU-Net's ``regions_class_order``).
HEADS = ("softmax", "regions")
#: ``model.num_regions`` when a model group has none: BraTS's WT, TC and ET.
DEFAULT_NUM_REGIONS = 3
#: Units of the post-processing's ET volume threshold (``postprocess.unit``).
VOLUME_UNITS = ("voxels", "mm3")
#: Kernels of the U-Net's class-logit convolution (3: the reference's published head).
HEAD_KERNELS = (1, 3)
#: Built-in losses (``training.loss``, the ``name`` of ``loss=default``).
LOSSES = ("dice+ce", "dice", "ce")
#: Built-in learning-rate schedules (``training.lr_schedule``).
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam",)
BLENDS = ("gaussian", "constant")
BENCHMARK_TARGETS = ("train", "predict", "pipeline", "runner")
#: Layouts the synthetic data set writes (``data.synthetic.layout``): ``flat`` BraTS 2019 names
#: in <case>/ folders, ``brats2019`` the same under HGG/ and LGG/, ``brats2021`` flat with BraTS
#: 2021 ids, and the layouts and labels of ``conf/data/{brats2023,msd_brain,nnunet_raw}.yaml``.
SYNTHETIC_LAYOUTS = ("flat", "brats2019", "brats2021", "brats2023", "msd_brain", "nnunet_raw")

# ---- the built-in components ------------------------------------------------------------------

UNET3D_TARGET = "unet3d.model.unet3d.build_unet3d"
SEGMENTATION_LOSS_TARGET = "unet3d.training.losses.SegmentationLoss"
REGION_LOSS_TARGET = "unet3d.training.region_loss.RegionLoss"
LR_SCHEDULE_TARGET = "unet3d.training.optimizer.learning_rate_schedule"
SYNTHETIC_DATASET_TARGET = "unet3d.data.datasets.SyntheticBraTS"
BRATS_FOLDER_TARGET = "unet3d.data.datasets.BraTSFolder"
#: Keys of the ``data`` group that the framework reads (preprocessing cache, training input);
#: the data set's ``_target_`` is called with every other key of the group.
DATA_PIPELINE_KEYS = ("name", "preprocessed_dir", "crop_size", "batch_size", "augment",
                      "augmentation", "foreground_probability", "shuffle_buffer", "cache",
                      "preprocess_workers",
                      # the layout and label convention (unet3d/data/layout.py)
                      "reader", "convention", "labels", "regions", "region_order")

# ---- the schema -------------------------------------------------------------------------------

#: The framework's settings, checked in this order (defaults: conf/<group>/*.yaml).
SETTINGS: dict[str, Setting] = {
    "mode.name": OneOf(MODES),
    "seed": Integer(minimum=0),
    "num_folds": Integer(minimum=2),
    "fold": Integer(minimum=0),
    "resume": Boolean(),
    # model: a component; the framework reads these keys of any model group.
    "model._target_": Target(),
    "model.name": Text(),
    "model.in_channels": Integer(minimum=1),
    "model.num_classes": Integer(minimum=2),
    # data: a component; the framework reads the pipeline keys of any data group.
    "data._target_": Target(),
    "data.name": Text(),
    "data.crop_size": Sides(int, spatial=True),
    "data.batch_size": Integer(minimum=1),
    "data.augment": Boolean(),
    "data.cache": BooleanOrAuto(),
    "data.preprocess_workers": Nullable(Integer(minimum=0)),
    "data.shuffle_buffer": Integer(minimum=1),
    "data.foreground_probability": Number(0.0, 1.0, True, True),
    # data.augmentation: conf/augmentation/ (mounted into the data group)
    **AUGMENTATION_SETTINGS,
    "training.max_steps": Integer(minimum=1),
    "training.optimizer": OneOf(OPTIMIZERS),
    "training.learning_rate": Number(0.0),
    "training.lr_schedule": OneOf(LR_SCHEDULES),
    "training.lr_warmup_steps": Integer(minimum=0),
    "training.loss": OneOf(LOSSES),
    "training.include_background": Boolean(),
    "training.log_every": Integer(minimum=1),
    "training.checkpoint_every": Integer(minimum=1),
    "training.keep_checkpoints": Integer(minimum=1),
    "training.deep_supervision": Boolean(),
    "training.deep_supervision_levels": Nullable(Integer(minimum=1)),
    "loss._target_": Target(),
    "lr_schedule._target_": Target(),
    "inference.window_size": Sides(int, spatial=True, optional=True),
    "inference.overlap": Number(0.0, 1.0, low_inclusive=True),
    "inference.blend": OneOf(BLENDS),
    "inference.batch_size": Integer(minimum=1),
    "inference.tta": Boolean(),
    "inference.crop_to_brain": Boolean(),
    "inference.crop_margin": Integer(minimum=0),
    "precision.policy": OneOf(PRECISION_POLICIES),
    "precision.xla": Boolean(),
    "precision.min_speedup": Number(0.0),
    "precision.reprobe": Boolean(),
    "device.type": OneOf(DEVICE_TYPES),
    "device.memory_growth": Boolean(),
    "device.mlu_thread_mode": Text(),
    "device.intra_op_threads": Integer(minimum=0),
    "device.inter_op_threads": Integer(minimum=0),
    "device.mlu_thread_count": Integer(minimum=1),
    "strategy.name": OneOf(STRATEGIES),
    "tracking.enabled": Boolean(),
    "tracking.log_model": Boolean(),
    "tracking.register_model": Nullable(Text()),
    "tracking.model_alias": Nullable(Text()),
}

#: Keys that one mode reads, checked only in that mode.
MODE_SETTINGS: dict[str, dict[str, Setting]] = {
    "evaluate": {"checkpoint": ExistingPath()},
    "predict": {
        "predict.checkpoint": ExistingPath(),
        "predict.input_dir": ExistingPath(directory=True, optional=True),
        "predict.fold": Nullable(Integer(minimum=0)),
        "predict.save_probabilities": Boolean(),
        "predict.overwrite": Boolean(),
        "predict.postprocess": Boolean(),
    },
    "postprocess": {
        "postprocess.checkpoint": ExistingPath(),
        "postprocess.unit": OneOf(VOLUME_UNITS),
        "postprocess.min_improvement": Number(0.0, low_inclusive=True),
    },
    "benchmark": {
        "benchmark.target": OneOf(BENCHMARK_TARGETS),
        "benchmark.warmup_steps": Integer(minimum=0),
        "benchmark.steps": Integer(minimum=1),
        "benchmark.synthetic_input": Boolean(),
        "benchmark.volume_shape": Sides(int),
    },
}

#: Arguments of the built-in components, by ``_target_`` (keys relative to the group). An
#: argument left out of the group takes the default of the component's signature.
COMPONENT_ARGUMENTS: dict[str, dict[str, Setting]] = {
    UNET3D_TARGET: {
        "base_filters": Integer(minimum=1),
        "max_filters": Integer(minimum=1),
        "num_levels": Integer(minimum=2),
        "norm": OneOf(NORMS),
        "output_kernel_size": OneOf(HEAD_KERNELS),
        "head": OneOf(HEADS),
        "num_regions": Integer(minimum=1),
    },
    REGION_LOSS_TARGET: {
        "num_classes": Integer(minimum=2),
        "bce_weight": Number(0.0, low_inclusive=True),
        "dice_weight": Number(0.0, low_inclusive=True),
    },
    SEGMENTATION_LOSS_TARGET: {
        "name": OneOf(LOSSES),
        "num_classes": Integer(minimum=2),
        "include_background": Boolean(),
    },
    LR_SCHEDULE_TARGET: {
        "name": OneOf(LR_SCHEDULES),
        "learning_rate": Number(0.0),
        "warmup_steps": Integer(minimum=0),
    },
    SYNTHETIC_DATASET_TARGET: {
        "synthetic.num_cases": Integer(minimum=1),
        "synthetic.shape": Sides(int, minimum=8),
        "synthetic.spacing": Sides(float),
        "synthetic.seed": Integer(minimum=0),
        "synthetic.layout": OneOf(SYNTHETIC_LAYOUTS),
        "synthetic.num_test": Integer(minimum=0),
    },
    BRATS_FOLDER_TARGET: {"raw_dir": ExistingPath(directory=True)},
}

_ABSENT = object()

#: The component groups, in the order they are checked.
COMPONENT_GROUPS = ("model", "data", "loss", "lr_schedule")


def validate(cfg: DictConfig) -> None:
    """Check every setting of a composed config; raise ConfigError naming the first bad key.

    Runs once, at start, without importing TensorFlow: ``SETTINGS``, the arguments of the
    built-in components, the keys of the selected mode, then the rules that tie keys together.

    Raises:
        ConfigError: one line starting with the dotted key, e.g.
            ``fold: must be in [0, num_folds=5), got 7``.
    """
    check_unknown_keys(get(cfg, "data.augmentation"))
    for key, setting in SETTINGS.items():
        setting.check(cfg, key)
    mode = get(cfg, "mode.name")
    # Predicting a folder of raw cases reads the data group's layout, not its raw_dir.
    skipped = {"data.raw_dir"} if mode == "predict" and get(cfg, "predict.input_dir") else set()
    for group in COMPONENT_GROUPS:
        arguments = COMPONENT_ARGUMENTS.get(get(cfg, f"{group}._target_"), {})
        for name, setting in arguments.items():
            key = f"{group}.{name}"
            if key not in skipped and get(cfg, key, _ABSENT) is not _ABSENT:
                setting.check(cfg, key)
    for key, setting in MODE_SETTINGS.get(mode, {}).items():
        setting.check(cfg, key)
    _check_rules(cfg, mode)


def head_problem(model_cfg: Any, loss_cfg: Any, num_painted_regions: int | None = None
                 ) -> str | None:
    """What is inconsistent between the head, the loss and the data set; None when nothing.

    ``model.head=regions`` (one sigmoid per region, nnU-Net's region-based training) needs the
    region loss (``loss=regions``) and the region loss needs ``model.head=regions``; with the
    data set's convention known (``unet3d.runner.check_num_classes``), ``model.num_regions``
    (default ``DEFAULT_NUM_REGIONS``) must equal its painted regions.

    Args:
        model_cfg: the ``model`` group; loss_cfg: the ``loss`` group (mappings).
        num_painted_regions: ``len(unet3d.data.regions.painted_regions(convention))``
            when the data set's convention is known.

    Returns:
        One line starting with the key to change, or None.
    """
    head = model_cfg.get("head") or "softmax"
    if head not in HEADS:
        return f"model.head: must be one of {', '.join(HEADS)}, got {head!r}"
    loss_target = loss_cfg.get("_target_")
    if head == "regions" and loss_target == SEGMENTATION_LOSS_TARGET:
        return ("loss: model.head=regions predicts one sigmoid per region; use loss=regions "
                "(BCE + soft Dice per region) instead of the class loss")
    if loss_target == REGION_LOSS_TARGET and head != "regions":
        return "model.head: loss=regions needs model.head=regions, got model.head=softmax"
    if head == "regions" and num_painted_regions is not None:
        regions = model_cfg.get("num_regions") or DEFAULT_NUM_REGIONS
        if regions != num_painted_regions:
            return (f"model.num_regions: the data set paints {num_painted_regions} regions, "
                    f"got {regions}")
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


def _check_rules(cfg: DictConfig, mode: str) -> None:
    """The rules between keys (each names the key to change)."""
    num_folds, fold = get(cfg, "num_folds"), get(cfg, "fold")
    if fold >= num_folds:
        raise ConfigError(f"fold: must be in [0, num_folds={num_folds}), got {fold}")
    # model.num_classes is checked against the data set's label convention once it is read
    # (unet3d.runner.check_num_classes).
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
