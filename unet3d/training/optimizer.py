"""The learning-rate schedule component and the optimizer that follows it.

``conf/lr_schedule/default.yaml`` names the built-in ``learning_rate_schedule`` (chosen by
``training.lr_schedule``); ``lr_schedule=<option>`` replaces it by any factory. The contract
(``docs/contracts.md``), checked by ``build_lr_schedule``: the target is called with its keys
plus ``total_steps`` (the optimizer steps this process takes) and returns a positive float
(a constant rate) or a ``keras.optimizers.schedules.LearningRateSchedule`` whose value at every
step is finite and >= 0, with a working ``get_config``.

TensorFlow / Keras are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from unet3d.config import LR_SCHEDULES
from unet3d.config.components import check_contract, instantiate, one_line

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)


def learning_rate_schedule(name: str, learning_rate: float, warmup_steps: int,
                           total_steps: int) -> Any:
    """The built-in schedules: a constant rate, or cosine decay to 0 after linear warm-up.

    Args:
        name: one of ``unet3d.config.LR_SCHEDULES``: ``constant`` or ``cosine``.
        learning_rate: the constant rate, or the peak of the cosine (after warm-up).
        warmup_steps: steps of linear warm-up from 0 (cosine only; at most
            ``total_steps - 1``).
        total_steps: optimizer steps of the run; the cosine reaches 0 there.

    Returns:
        ``learning_rate`` as a float (constant), or a ``keras.optimizers.schedules.CosineDecay``.

    Raises:
        ValueError: unknown ``name``.
    """
    import keras

    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; expected one of "
                         f"{LR_SCHEDULES}")
    rate = float(learning_rate)
    if name == "constant":
        return rate
    warmup = min(int(warmup_steps), max(total_steps - 1, 0))
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(total_steps, 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=rate,
        warmup_steps=warmup,
    )


def build_lr_schedule(schedule_cfg: Mapping[str, Any], total_steps: int) -> Any:
    """Build the schedule that the ``lr_schedule`` group names with ``_target_`` and check it.

    Args:
        schedule_cfg: the ``lr_schedule`` config group (``_target_`` and its arguments).
        total_steps: optimizer steps this process takes (``training.max_steps``, divided by
            the workers under Horovod); passed to the target as ``total_steps``.

    Returns:
        A float learning rate, or a ``keras.optimizers.schedules.LearningRateSchedule``.

    Raises:
        ConfigError: one line starting with ``lr_schedule._target_``: the target does not
            import, its call fails, or the schedule breaks the contract.
    """
    schedule = instantiate(schedule_cfg, "lr_schedule", total_steps=int(total_steps))
    check_lr_schedule(schedule, int(total_steps), str(schedule_cfg.get("_target_")))
    return schedule


def check_lr_schedule(schedule: Any, total_steps: int, target: str = "the schedule") -> None:
    """Check a learning-rate schedule at steps 0, ``total_steps // 2`` and ``total_steps``.

    Raises:
        ConfigError: ``lr_schedule._target_: <target> ...``: neither a positive number nor a
            ``LearningRateSchedule``, a value that is negative or not finite, or no
            ``get_config``.
    """
    import keras
    import numpy as np

    if isinstance(schedule, int | float) and not isinstance(schedule, bool):
        check_contract(np.isfinite(schedule) and schedule > 0, "lr_schedule",
                       f"{target} returned the rate {schedule!r}; expected a positive number")
        return
    check_contract(isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule),
                   "lr_schedule", lambda: (
                       f"{target} returned a {type(schedule).__name__}; expected a positive "
                       f"float or a keras.optimizers.schedules.LearningRateSchedule"))
    for step in sorted({0, total_steps // 2, total_steps}):
        try:
            value = float(keras.ops.convert_to_numpy(schedule(step)))
        except Exception as error:  # noqa: BLE001 - any failure breaks the contract
            check_contract(False, "lr_schedule", f"{target} fails at step {step}: "
                                                 f"{one_line(error)}")
        check_contract(np.isfinite(value) and value >= 0, "lr_schedule",
                       f"{target} gives the rate {value} at step {step}; expected a finite "
                       f"value >= 0")
    try:
        schedule.get_config()
    except Exception as error:  # noqa: BLE001 - any failure breaks the contract
        check_contract(False, "lr_schedule", f"{target}: get_config() fails "
                                             f"({one_line(error)}); a schedule must implement it")


def build_optimizer(schedule_cfg: Mapping[str, Any],
                    total_steps: int) -> keras.optimizers.Optimizer:
    """Adam (the reference's optimizer, the only one) following the configured schedule.

    Args:
        schedule_cfg: the ``lr_schedule`` config group.
        total_steps: optimizer steps this process takes.

    Raises:
        ConfigError: the schedule does not build or breaks its contract.
    """
    import keras

    return keras.optimizers.Adam(learning_rate=build_lr_schedule(schedule_cfg, total_steps))


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimizer uses at its current iteration."""
    import keras

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = inner.learning_rate
    if callable(rate):
        rate = rate(inner.iterations)
    return float(keras.ops.convert_to_numpy(rate))
