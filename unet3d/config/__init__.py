"""The one home of every setting's type and allowed values; validation once, at start.

Hydra composes ``conf/`` (its YAML files hold the default values) and rejects unknown groups,
options and keys. This package holds the rest of what a setting is:

- the vocabularies (``NORMS``, ``LOSSES``, ...; ``unet3d.config.vocabulary``): every list of
  allowed values, which the modules import from here;
- ``SETTINGS``: the framework's keys, each with its type and range or allowed values
  (``unet3d.config.settings``; the ``data.augmentation`` keys: ``unet3d.config.augmentation``);
- ``MODE_SETTINGS``: the keys that only one mode reads;
- ``COMPONENT_ARGUMENTS``: the arguments of the built-in components (the U-Net, the
  segmentation loss, the learning-rate schedule, the synthetic and BraTS data sets), keyed by
  their ``_target_``. A component of the user's own is checked for the framework keys of its
  group only (``docs/contracts.md``); its arguments are its own business.

``validate`` checks a composed config once, before any heavy work, with the rules between
keys (``unet3d.config.rules``), and raises ``ConfigError`` with one line that starts with the
dotted key. It is the one place that checks a setting: the code that reads one trusts it, and
the YAML is the one place that gives its default (a component built from config gets every
argument from its group, ``tests/test_config_defaults.py``). Neither it nor this package imports
TensorFlow or the user's components, so ``--help``, ``--cfg job`` and config errors stay
instant. ``unet3d.config.components`` builds a component from its group.
"""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from unet3d.config.augmentation import AUGMENTATION_SETTINGS, check_unknown_keys
from unet3d.config.rules import (
    check_rules,
    data_problem,
    head_problem,
    model_head,
    model_regions,
    registry_problem,
)
from unet3d.config.settings import (
    Boolean,
    BooleanOrAuto,
    ExistingPath,
    Integer,
    Nullable,
    Number,
    Numbers,
    OneOf,
    Setting,
    Sides,
    SubsetOf,
    Target,
    Text,
    Texts,
    get,
)
from unet3d.config.vocabulary import (
    BENCHMARK_TARGETS,
    BLENDS,
    BRATS_FOLDER_TARGET,
    CLUSTER_RESOLVERS,
    COMMUNICATIONS,
    DATA_PIPELINE_KEYS,
    DEFAULT_NUM_REGIONS,
    DEVICE_TYPES,
    EXPORT_FORMATS,
    FOLD_MODES,
    HEAD_KERNELS,
    HEADS,
    INFERENCE_ENGINES,
    LESIONWISE_RULES,
    LOSSES,
    LR_SCHEDULE_TARGET,
    LR_SCHEDULES,
    MODES,
    NORMS,
    PRECISION_POLICIES,
    REGION_LOSS_TARGET,
    SEGMENTATION_LOSS_TARGET,
    STRATEGIES,
    SYNTHETIC_DATASET_TARGET,
    SYNTHETIC_LAYOUTS,
    TRAINING_MODES,
    UNET3D_TARGET,
    VOLUME_UNITS,
)

__all__ = [
    "BENCHMARK_TARGETS", "BLENDS", "BRATS_FOLDER_TARGET", "CLUSTER_RESOLVERS", "COMMUNICATIONS",
    "COMPONENT_ARGUMENTS", "CONFIG_DIR", "DATA_PIPELINE_KEYS", "DEFAULT_NUM_REGIONS",
    "DEVICE_TYPES", "EXPORT_FORMATS", "FOLD_MODES", "HEADS", "HEAD_KERNELS", "INFERENCE_ENGINES",
    "LESIONWISE_RULES", "LOSSES", "LR_SCHEDULES", "LR_SCHEDULE_TARGET", "MODES", "MODE_SETTINGS",
    "NORMS", "PRECISION_POLICIES", "REGION_LOSS_TARGET", "SEGMENTATION_LOSS_TARGET", "SETTINGS",
    "STRATEGIES", "SYNTHETIC_DATASET_TARGET", "SYNTHETIC_LAYOUTS", "TRAINING_MODES",
    "UNET3D_TARGET", "VOLUME_UNITS", "data_problem", "head_problem", "model_head", "model_regions",
    "registry_problem", "validate",
]

#: conf/ beside the package (an editable install or a source checkout), where Hydra composes
#: from. An absolute path keeps the console script `unet3d`, `python -m unet3d.run` and shell
#: completion on the same files.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"

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
    "training.learning_rate": Number(0.0),
    "training.lr_schedule": OneOf(LR_SCHEDULES),
    "training.lr_warmup_steps": Integer(minimum=0),
    "training.log_every": Integer(minimum=1),
    "training.checkpoint_every": Integer(minimum=1),
    "training.keep_checkpoints": Integer(minimum=1),
    "training.deep_supervision": Boolean(),
    "training.deep_supervision_levels": Nullable(Integer(minimum=1)),
    "training.deep_supervision_weights": Nullable(Numbers(minimum=0.0)),
    "loss._target_": Target(),
    "lr_schedule._target_": Target(),
    "inference.window_size": Sides(int, spatial=True, optional=True),
    "inference.overlap": Number(0.0, 1.0, low_inclusive=True),
    "inference.blend": OneOf(BLENDS),
    "inference.batch_size": Integer(minimum=1),
    "inference.tta": Boolean(),
    "inference.crop_to_brain": Boolean(),
    "inference.crop_margin": Integer(minimum=0),
    "inference.region_threshold": Number(0.0, 1.0),
    "evaluation.lesionwise": OneOf(LESIONWISE_RULES),
    "inference.single_window": Boolean(),
    "inference.engine": OneOf(INFERENCE_ENGINES),
    "inference.engine_threads": Nullable(Integer(minimum=1)),
    "inference.engine_cache": Nullable(Text()),
    "inference.engine_reprobe": Boolean(),
    "precision.name": Text(),
    "precision.policy": OneOf(PRECISION_POLICIES),
    "precision.xla": Boolean(),
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
    "tracking.check_retries": Integer(minimum=0),
    "tracking.check_timeout_s": Integer(minimum=1),
    "tracking.lock_wait_s": Number(0.0, low_inclusive=True),
    "tracking.http_max_retries": Nullable(Integer(minimum=0)),
    "tracking.http_timeout_s": Nullable(Integer(minimum=1)),
    "tracking.ui_url": Nullable(Text()),
    # serve: the served model's limits (conf/serve/default.yaml, unet3d/serving/pyfunc_model.py)
    "serve.max_voxels": Integer(minimum=1),
    "serve.max_volume_bytes": Integer(minimum=1),
    "serve.max_concurrent": Integer(minimum=1),
    "serve.retry_after_s": Integer(minimum=1),
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
    "export": {
        "export.checkpoint": ExistingPath(),
        "export.fold": Nullable(Integer(minimum=0)),
        "export.output_dir": Nullable(Text()),
        "export.formats": SubsetOf(EXPORT_FORMATS),
        "export.tolerance": Number(0.0),
        "export.int8.calibration_windows": Integer(minimum=1),
        "export.int8.check_windows": Integer(minimum=1),
        "export.int8.min_agreement": Number(0.0, 1.0, low_inclusive=True, high_inclusive=True),
        "export.int8.seed": Integer(minimum=0),
        "export.overwrite": Boolean(),
    },
    "postprocess": {
        "postprocess.checkpoint": ExistingPath(),
        "postprocess.unit": OneOf(VOLUME_UNITS),
        "postprocess.min_improvement": Number(0.0, low_inclusive=True),
    },
    "cross_validate": {
        "mode.fold_mode": OneOf(FOLD_MODES),
        "mode.fold_overrides": Texts(),
    },
    "score": {
        "score.predictions": ExistingPath(directory=True),
        "score.references": ExistingPath(directory=True),
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
    if mode == "score":  # files named by score.*; the data group gives only the labels
        skipped = {"data.raw_dir"}
    for group in COMPONENT_GROUPS:
        arguments = COMPONENT_ARGUMENTS.get(get(cfg, f"{group}._target_"), {})
        for name, setting in arguments.items():
            key = f"{group}.{name}"
            if key not in skipped and get(cfg, key, _ABSENT) is not _ABSENT:
                setting.check(cfg, key)
    for key, setting in MODE_SETTINGS.get(mode, {}).items():
        setting.check(cfg, key)
    check_rules(cfg, mode)
    if mode == "cross_validate":  # every fold job runs the config with mode.name=<fold_mode>
        folds = copy.deepcopy(cfg)
        OmegaConf.update(folds, "mode.name", get(cfg, "mode.fold_mode"), merge=False)
        validate(folds)
