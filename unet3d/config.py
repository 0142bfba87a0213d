"""Validation of the composed Hydra config, before any heavy import or work.

Hydra itself rejects unknown groups, options and keys. This module checks values: ranges,
choices, required paths and cross-key consistency, and raises `ConfigError` with a one-line
message that starts with the dotted key. It never imports TensorFlow, so `--help`, `--cfg job`
and config errors stay instant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from unet3d.errors import ConfigError
from unet3d.tracking.run_reference import is_run_reference

MODES = ("train", "evaluate", "train_and_evaluate", "predict", "benchmark")
TRAINING_MODES = ("train", "train_and_evaluate")
DEVICE_TYPES = ("auto", "cpu", "gpu", "mlu")
STRATEGIES = ("auto", "mirrored", "multi_worker", "horovod")
PRECISION_POLICIES = ("float32", "auto", "mixed_bfloat16", "mixed_float16")
NORMS = ("instance", "group", "batch")
LOSSES = ("dice+ce", "dice", "ce")
LR_SCHEDULES = ("constant", "cosine")
BLENDS = ("gaussian", "constant")
BENCHMARK_TARGETS = ("train", "predict", "pipeline", "runner")
CLUSTER_RESOLVERS = ("tf_config", "slurm")

_MISSING_HINTS = {
    "data.raw_dir": "pass data.raw_dir=/path/to/MICCAI_BraTS_2019_Data_Training",
}


def get(cfg: DictConfig, key: str) -> Any:
    """Return the resolved value at a dotted key, turning OmegaConf errors into ConfigError."""
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
    except MissingMandatoryValue:
        hint = _MISSING_HINTS.get(key, f"pass {key}=...")
        raise ConfigError(f"{key}: missing mandatory value; {hint}") from None
    except InterpolationResolutionError as error:
        raise ConfigError(f"{key}: cannot resolve interpolation ({error})") from None
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _integer(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    value = get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")
    return value


def _number(cfg: DictConfig, key: str, low: float, high: float | None = None,
            low_inclusive: bool = False, high_inclusive: bool = False) -> float:
    value = get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    too_low = value < low if low_inclusive else value <= low
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        bound = "inf" if high is None else high
        raise ConfigError(f"{key}: must be in {left}{low}, {bound}{right}, got {value}")
    return float(value)


def _choice(cfg: DictConfig, key: str, choices: Sequence[Any]) -> Any:
    value = get(cfg, key)
    if value not in choices:
        listed = ", ".join(str(choice) for choice in choices)
        raise ConfigError(f"{key}: must be one of {listed}; got {value!r}")
    return value


def _boolean(cfg: DictConfig, key: str) -> bool:
    value = get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


def _triple(cfg: DictConfig, key: str, cast: type = int, divisor: int = 1) -> list:
    value = get(cfg, key)
    if not isinstance(value, list) or len(value) != 3:
        raise ConfigError(f"{key}: must be a list of 3 numbers, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
            raise ConfigError(f"{key}: every entry must be a positive number, got {value!r}")
        if cast is int and (not isinstance(item, int) or item % divisor):
            raise ConfigError(
                f"{key}: every side must be an integer divisible by {divisor} "
                f"(2 ** (model.num_levels - 1)), got {value!r}"
            )
    return value


def _existing_path(cfg: DictConfig, key: str, must_be_dir: bool = False) -> Path:
    value = get(cfg, key)
    if value is None or value == "":
        hint = _MISSING_HINTS.get(key, f"pass {key}=PATH")
        raise ConfigError(f"{key}: missing; {hint}")
    paths = value if isinstance(value, list) else [value]
    for item in paths:
        if is_run_reference(str(item)):
            continue  # looked up in MLflow when the job resolves its models
        path = Path(str(item)).expanduser()
        if not path.exists():
            raise ConfigError(f"{key}: path does not exist: {path}")
        if must_be_dir and not path.is_dir():
            raise ConfigError(f"{key}: not a directory: {path}")
    return Path(str(paths[0])).expanduser()


def validate(cfg: DictConfig) -> None:
    """Check every value the runner uses; raise ConfigError naming the first bad key."""
    mode = _choice(cfg, "mode.name", MODES)
    _integer(cfg, "seed", minimum=0)
    num_folds = _integer(cfg, "num_folds", minimum=2)
    fold = _integer(cfg, "fold", minimum=0)
    if fold >= num_folds:
        raise ConfigError(f"fold: must be in [0, num_folds={num_folds}), got {fold}")
    _boolean(cfg, "resume")

    _validate_model(cfg)
    divisor = 2 ** (get(cfg, "model.num_levels") - 1)
    _validate_data(cfg, num_folds, divisor)
    _validate_training(cfg)
    _validate_inference(cfg, divisor)
    _choice(cfg, "precision.policy", PRECISION_POLICIES)
    _boolean(cfg, "precision.xla")
    _choice(cfg, "device.type", DEVICE_TYPES)
    _integer(cfg, "device.intra_op_threads", minimum=0)
    _integer(cfg, "device.inter_op_threads", minimum=0)
    _integer(cfg, "device.mlu_thread_count", minimum=1)
    strategy = _choice(cfg, "strategy.name", STRATEGIES)
    if strategy == "horovod" and get(cfg, "precision.xla"):
        raise ConfigError(
            "precision.xla: XLA cannot compile Horovod's collective ops; use "
            "precision.xla=false or strategy=mirrored/multi_worker"
        )
    if strategy == "multi_worker":
        _choice(cfg, "strategy.cluster_resolver", CLUSTER_RESOLVERS)
    _boolean(cfg, "tracking.enabled")

    if mode == "evaluate":
        _existing_path(cfg, "checkpoint")
    if mode == "predict":
        _existing_path(cfg, "predict.checkpoint")
        if get(cfg, "predict.input_dir") is not None:
            _existing_path(cfg, "predict.input_dir", must_be_dir=True)
    if mode == "benchmark":
        _choice(cfg, "benchmark.target", BENCHMARK_TARGETS)
        _integer(cfg, "benchmark.warmup_steps", minimum=0)
        _integer(cfg, "benchmark.steps", minimum=1)
        if get(cfg, "benchmark.target") == "runner":
            _integer(cfg, "benchmark.rounds", minimum=1)


def _validate_model(cfg: DictConfig) -> None:
    _integer(cfg, "model.in_channels", minimum=1)
    classes = _integer(cfg, "model.num_classes", minimum=2)
    if classes != 4:
        raise ConfigError(f"model.num_classes: BraTS has 4 training classes, got {classes}")
    base = _integer(cfg, "model.base_filters", minimum=1)
    largest = _integer(cfg, "model.max_filters", minimum=1)
    if largest < base:
        raise ConfigError(
            f"model.max_filters: must be >= model.base_filters={base}, got {largest}"
        )
    _integer(cfg, "model.num_levels", minimum=2)
    _choice(cfg, "model.output_kernel_size", (1, 3))
    norm = _choice(cfg, "model.norm", NORMS)
    if norm == "group" and base % min(16, base):
        raise ConfigError(f"model.base_filters: group norm needs a multiple of 16, got {base}")


def _validate_data(cfg: DictConfig, num_folds: int, divisor: int) -> None:
    get(cfg, "data.name")
    _triple(cfg, "data.crop_size", int, divisor)
    _integer(cfg, "data.batch_size", minimum=1)
    _boolean(cfg, "data.augment")
    _boolean(cfg, "data.cache")
    _integer(cfg, "data.shuffle_buffer", minimum=1)
    _number(cfg, "data.foreground_probability", 0.0, 1.0, True, True)
    if not _boolean(cfg, "data.generate"):
        _existing_path(cfg, "data.raw_dir", must_be_dir=True)
        return
    cases = _integer(cfg, "data.synthetic.num_cases", minimum=1)
    if cases < num_folds:
        raise ConfigError(
            f"data.synthetic.num_cases: must be >= num_folds={num_folds}, got {cases}"
        )
    _triple(cfg, "data.synthetic.shape", int)
    _triple(cfg, "data.synthetic.spacing", float)
    _integer(cfg, "data.synthetic.seed", minimum=0)
    _choice(cfg, "data.synthetic.layout", ("flat", "brats2019"))


def _validate_training(cfg: DictConfig) -> None:
    _integer(cfg, "training.max_steps", minimum=1)
    _choice(cfg, "training.optimizer", ("adam",))
    _number(cfg, "training.learning_rate", 0.0)
    _choice(cfg, "training.lr_schedule", LR_SCHEDULES)
    _integer(cfg, "training.lr_warmup_steps", minimum=0)
    _choice(cfg, "training.loss", LOSSES)
    _boolean(cfg, "training.include_background")
    _integer(cfg, "training.log_every", minimum=1)
    _integer(cfg, "training.checkpoint_every", minimum=1)
    _integer(cfg, "training.keep_checkpoints", minimum=1)


def _validate_inference(cfg: DictConfig, divisor: int) -> None:
    if get(cfg, "inference.window_size") is not None:
        _triple(cfg, "inference.window_size", int, divisor)
    _number(cfg, "inference.overlap", 0.0, 1.0, low_inclusive=True)
    _choice(cfg, "inference.blend", BLENDS)
    _integer(cfg, "inference.batch_size", minimum=1)
    _boolean(cfg, "inference.tta")
