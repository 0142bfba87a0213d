"""Optimizer and learning-rate schedule from the ``training`` config group."""

from __future__ import annotations

from typing import Any

import keras
from omegaconf import DictConfig


def learning_rate_schedule(training_cfg: DictConfig, total_steps: int) -> Any:
    """Constant rate, or Keras' cosine decay to 0 at ``total_steps`` after linear warm-up."""
    rate = float(training_cfg.learning_rate)
    if training_cfg.lr_schedule == "constant":
        return rate
    warmup = min(int(training_cfg.lr_warmup_steps), max(total_steps - 1, 0))
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(total_steps, 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup, 1),
        warmup_target=rate,
        warmup_steps=warmup,
    )


def build_optimizer(training_cfg: DictConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """Adam with the configured schedule (the reference recipe: Adam, 2e-4)."""
    schedule = learning_rate_schedule(training_cfg, total_steps)
    return keras.optimizers.Adam(learning_rate=schedule)


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimizer uses at its current iteration."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = inner.learning_rate
    if callable(rate):
        rate = rate(inner.iterations)
    return float(keras.ops.convert_to_numpy(rate))
