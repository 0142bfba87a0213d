"""The types of settings: how one config key is read and checked (``unet3d.config``'s schema).

Each ``Setting`` reads the resolved value at a dotted key and raises ``ConfigError`` with one
line that starts with the key when the value has the wrong type or is out of range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from unet3d.config.components import target_problem
from unet3d.errors import ConfigError

#: MLflow's URI scheme for a run (``runs:/<run id>[/<artifact path>]``), accepted as a checkpoint.
RUN_REFERENCE_PREFIX = "runs:/"
#: MLflow's URI scheme for a registered model (``models:/<name>@<alias>``, ``models:/<name>/<v>``).
MODEL_REFERENCE_PREFIX = "models:/"

#: Hints of the errors of a missing value, by key.
MISSING_HINTS = {
    "data.raw_dir": "pass data.raw_dir=/path/to/the/data/set (its folder as downloaded)",
}


def get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    """The resolved value at a dotted key (plain containers); ``default`` when it is absent.

    Raises:
        ConfigError: the value is the mandatory marker ``???`` or its interpolation fails.
    """
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_missing=True)
    except MissingMandatoryValue:
        hint = MISSING_HINTS.get(key, f"pass {key}=...")
        raise ConfigError(f"{key}: missing mandatory value; {hint}") from None
    except InterpolationResolutionError as error:
        raise ConfigError(f"{key}: cannot resolve interpolation ({error})") from None
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def input_divisor(model: Mapping[str, Any] | DictConfig) -> int:
    """What every spatial side of a model input (crop, window) must be divisible by.

    ``2 ** (num_levels - 1)`` when the ``model`` group has ``num_levels`` (the U-Net's
    ``num_levels - 1`` stride-2 down blocks), else 1.

    Args:
        model: the ``model`` config group.
    """
    levels = model.get("num_levels")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        return 1
    return 2 ** (levels - 1)


# ---- the types of settings --------------------------------------------------------------------


class Setting:
    """The type and allowed values of one config key."""

    def check(self, cfg: DictConfig, key: str) -> Any:
        """Return the value at ``key``; raise ConfigError (one line naming ``key``) if bad."""
        raise NotImplementedError


@dataclass(frozen=True)
class Integer(Setting):
    """An integer (not a boolean), at least ``minimum`` when given."""

    minimum: int | None = None

    def check(self, cfg: DictConfig, key: str) -> int:  # noqa: D102
        value = get(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{key}: must be >= {self.minimum}, got {value}")
        return value


@dataclass(frozen=True)
class Number(Setting):
    """A real number in an interval (``high`` None: unbounded above)."""

    low: float
    high: float | None = None
    low_inclusive: bool = False
    high_inclusive: bool = False

    def check(self, cfg: DictConfig, key: str) -> float:  # noqa: D102
        value = get(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        too_low = value < self.low if self.low_inclusive else value <= self.low
        too_high = self.high is not None and (
            value > self.high if self.high_inclusive else value >= self.high)
        if too_low or too_high:
            left = "[" if self.low_inclusive else "("
            right = "]" if self.high_inclusive else ")"
            bound = "inf" if self.high is None else self.high
            raise ConfigError(f"{key}: must be in {left}{self.low}, {bound}{right}, got {value}")
        return float(value)


@dataclass(frozen=True)
class Boolean(Setting):
    """``true`` or ``false``."""

    def check(self, cfg: DictConfig, key: str) -> bool:  # noqa: D102
        value = get(cfg, key)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value


@dataclass(frozen=True)
class BooleanOrAuto(Setting):
    """``true``, ``false`` or ``auto`` (decided at run time, see the key's comment in conf/)."""

    def check(self, cfg: DictConfig, key: str) -> bool | str:  # noqa: D102
        value = get(cfg, key)
        if not isinstance(value, bool) and value != "auto":
            raise ConfigError(f"{key}: must be true, false or auto, got {value!r}")
        return value


@dataclass(frozen=True)
class OneOf(Setting):
    """One of a fixed list of values."""

    choices: Sequence[Any]

    def check(self, cfg: DictConfig, key: str) -> Any:  # noqa: D102
        value = get(cfg, key)
        if value not in self.choices:
            listed = ", ".join(str(choice) for choice in self.choices)
            raise ConfigError(f"{key}: must be one of {listed}; got {value!r}")
        return value


@dataclass(frozen=True)
class Nullable(Setting):
    """Null, or a value of ``setting`` (null means "derived", see the key's comment in conf/)."""

    setting: Setting

    def check(self, cfg: DictConfig, key: str) -> Any:  # noqa: D102
        return None if get(cfg, key) is None else self.setting.check(cfg, key)


@dataclass(frozen=True)
class Text(Setting):
    """A non-empty string."""

    def check(self, cfg: DictConfig, key: str) -> str:  # noqa: D102
        value = get(cfg, key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
        return value


@dataclass(frozen=True)
class Sides(Setting):
    """Three positive sides (H, W, D); ``spatial``: integers divisible by the model's divisor.

    ``minimum``: the smallest side allowed. ``optional``: null is allowed (and means
    "derived", see the key's comment in conf/).
    """

    cast: type = int
    spatial: bool = False
    optional: bool = False
    minimum: float | None = None

    def check(self, cfg: DictConfig, key: str) -> list | None:  # noqa: D102
        value = get(cfg, key)
        if value is None and self.optional:
            return None
        if not isinstance(value, list) or len(value) != 3:
            raise ConfigError(f"{key}: must be a list of 3 numbers, got {value!r}")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
                raise ConfigError(f"{key}: every entry must be a positive number, got {value!r}")
        if self.cast is int and not all(isinstance(item, int) for item in value):
            raise ConfigError(f"{key}: every side must be an integer, got {value!r}")
        if self.minimum is not None and min(value) < self.minimum:
            raise ConfigError(f"{key}: every side must be >= {self.minimum}, got {value!r}")
        if self.spatial:
            divisor = input_divisor(get(cfg, "model") or {})
            if any(item % divisor for item in value):
                nearest = [-(-int(item) // divisor) * divisor for item in value]
                raise ConfigError(
                    f"{key}: every side must be an integer divisible by {divisor} "
                    f"(2 ** (model.num_levels - 1)), got {value!r}; e.g. "
                    f"{key}=[{','.join(map(str, nearest))}]"
                )
        return value


@dataclass(frozen=True)
class ExistingPath(Setting):
    """A path that exists (or a list of them); ``runs:/`` and ``models:/`` references pass."""

    directory: bool = False
    optional: bool = False

    def check(self, cfg: DictConfig, key: str) -> Path | None:  # noqa: D102
        value = get(cfg, key)
        if value is None or value == "":
            if self.optional:
                return None
            hint = MISSING_HINTS.get(key, f"pass {key}=PATH")
            raise ConfigError(f"{key}: missing; {hint}")
        paths = value if isinstance(value, list) else [value]
        for item in paths:
            if str(item).startswith((RUN_REFERENCE_PREFIX, MODEL_REFERENCE_PREFIX)):
                continue  # looked up in MLflow when the job resolves its models
            path = Path(str(item)).expanduser()
            if not path.exists():
                raise ConfigError(f"{key}: path does not exist: {path}")
            if self.directory and not path.is_dir():
                raise ConfigError(f"{key}: not a directory: {path}")
        return Path(str(paths[0])).expanduser()


@dataclass(frozen=True)
class Target(Setting):
    """A component's ``_target_``: the dotted import path of a class or factory.

    Checked without running any module (no TensorFlow at start): the modules of the path
    must exist and the last one must define the name (``components.target_problem``). The
    import itself happens when the job builds the component (``components.instantiate``).
    """

    def check(self, cfg: DictConfig, key: str) -> str:  # noqa: D102
        value = get(cfg, key)
        if value is None:
            group = key.rsplit(".", 1)[0]
            raise ConfigError(f"{key}: missing; name the class or factory of the {group} "
                              f"(see docs/contracts.md)")
        problem = target_problem(value)
        if problem is not None:
            raise ConfigError(f"{key}: {problem}")
        return value


@dataclass(frozen=True)
class Interval(Setting):
    """``[low, high]`` of a uniform draw: two numbers, ``low <= high``, within the bounds.

    ``minimum`` / ``maximum``: the bounds (None: unbounded); ``open_minimum``: ``low`` must be
    strictly above ``minimum`` (a factor or a sigma, which must stay > 0).
    """

    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False

    def check(self, cfg: DictConfig, key: str) -> tuple[float, float]:  # noqa: D102
        value = get(cfg, key)
        if (not isinstance(value, list) or len(value) != 2 or any(
                isinstance(item, bool) or not isinstance(item, int | float) for item in value)):
            raise ConfigError(f"{key}: must be [low, high] (2 numbers), got {value!r}")
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ConfigError(f"{key}: low must be <= high, got {value!r}")
        if self.minimum is not None and (low <= self.minimum if self.open_minimum
                                         else low < self.minimum):
            bound = ">" if self.open_minimum else ">="
            raise ConfigError(f"{key}: low must be {bound} {self.minimum:g}, got {value!r}")
        if self.maximum is not None and high > self.maximum:
            raise ConfigError(f"{key}: high must be <= {self.maximum:g}, got {value!r}")
        return low, high


@dataclass(frozen=True)
class SubsetOf(Setting):
    """A list of distinct values, each one of ``choices`` (may be empty)."""

    choices: Sequence[Any]

    def check(self, cfg: DictConfig, key: str) -> list:  # noqa: D102
        value = get(cfg, key)
        listed = ", ".join(str(choice) for choice in self.choices)
        if not isinstance(value, list) or any(
                isinstance(item, bool) or item not in self.choices for item in value):
            raise ConfigError(f"{key}: must be a list of values from {listed}; got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"{key}: every value at most once, got {value!r}")
        return value


@dataclass(frozen=True)
class Numbers(Setting):
    """A non-empty list of numbers, each at least ``minimum`` when given."""

    minimum: float | None = None

    def check(self, cfg: DictConfig, key: str) -> list:  # noqa: D102
        value = get(cfg, key)
        if (not isinstance(value, list) or not value or any(
                isinstance(item, bool) or not isinstance(item, int | float) for item in value)):
            raise ConfigError(f"{key}: must be a non-empty list of numbers, got {value!r}")
        if self.minimum is not None and min(value) < self.minimum:
            raise ConfigError(f"{key}: every number must be >= {self.minimum:g}, got {value!r}")
        return value


@dataclass(frozen=True)
class Texts(Setting):
    """A list of strings (may be empty)."""

    def check(self, cfg: DictConfig, key: str) -> list:  # noqa: D102
        value = get(cfg, key)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
        return value
