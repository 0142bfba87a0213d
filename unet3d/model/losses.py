"""Segmentation losses: soft Dice, cross-entropy and their sum, per sample.

Definitions (per sample ``b`` and class ``k``, sums over the voxels of the crop):

- soft Dice ``dice[b, k] = 2 * sum(y * p) / (sum(y) + sum(p) + smooth)`` (the reference's
  form, ``smooth = 1e-5`` in the denominator only);
- ``dice_loss[b] = mean over the scored classes of (1 - dice[b, k])``; the scored classes are the
  foreground classes 1..K-1, or all K with ``include_background``. Taking the mean (the
  reference sums) keeps the loss in [0, 1] whatever the number of classes. A class absent from
  both label and prediction scores Dice 0, i.e. a constant 1 in the mean with no gradient;
- ``ce_loss[b] = mean over voxels of -log(clip(p[label], 1e-7, 1))``;
- ``dice+ce`` is ``dice_loss + ce_loss``.

The functions return per-sample vectors of shape ``[B]``; the training loop sums them and
divides by the global batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Loss names accepted by ``segmentation_loss`` (and ``training.loss``).
LOSSES: tuple[str, ...] = ("dice+ce", "dice", "ce")
#: Probabilities are clipped to [PROBABILITY_EPSILON, 1] before the logarithm.
PROBABILITY_EPSILON = 1e-7


def segmentation_loss(
    labels: Any,
    probabilities: Any,
    num_classes: int = 4,
    loss: str = "dice+ce",
    include_background: bool = False,
    smooth: float = 1e-5,
) -> tuple[Any, dict[str, Any]]:
    """Compute the per-sample segmentation loss.

    Args:
        labels: integer class labels ``[B, h, w, d]`` (values in ``0..num_classes-1``).
        probabilities: softmax probabilities ``[B, h, w, d, num_classes]`` (cast to float32).
        num_classes: number of classes ``K``.
        loss: ``"dice+ce"``, ``"dice"`` or ``"ce"``.
        include_background: score class 0 in the Dice term too.
        smooth: denominator epsilon of the soft Dice.

    Returns:
        ``(total, {"dice_loss": dice, "ce_loss": ce})``, each a float32 tensor of shape ``[B]``;
        both parts are always returned (for logging) whatever ``loss`` selects.

    Raises:
        ValueError: unknown ``loss``, or no class left to score in the Dice term.
    """
    import tensorflow as tf

    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    if num_classes < 1 or (num_classes < 2 and not include_background):
        raise ValueError(
            f"num_classes={num_classes} leaves no class to score "
            f"(include_background={include_background})"
        )
    probabilities = tf.cast(probabilities, tf.float32)
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), depth=num_classes, dtype=tf.float32)
    spatial_axes = [1, 2, 3]

    intersection = tf.reduce_sum(one_hot * probabilities, axis=spatial_axes)  # [B, K]
    denominator = tf.reduce_sum(one_hot, axis=spatial_axes) + tf.reduce_sum(
        probabilities, axis=spatial_axes
    )
    dice = 2.0 * intersection / (denominator + smooth)
    if not include_background:
        dice = dice[:, 1:]
    dice_loss = tf.reduce_mean(1.0 - dice, axis=-1)

    clipped = tf.clip_by_value(probabilities, PROBABILITY_EPSILON, 1.0)
    log_likelihood = tf.reduce_sum(one_hot * tf.math.log(clipped), axis=-1)  # [B, h, w, d]
    ce_loss = -tf.reduce_mean(log_likelihood, axis=spatial_axes)

    if loss == "dice":
        total = dice_loss
    elif loss == "ce":
        total = ce_loss
    else:
        total = dice_loss + ce_loss
    return total, {"dice_loss": dice_loss, "ce_loss": ce_loss}


def make_loss_fn(
    cfg: Any, num_classes: int | None = None
) -> Callable[[Any, Any], tuple[Any, dict[str, Any]]]:
    """Return ``loss_fn(labels, probabilities) -> (per-sample total, parts)`` from the config.

    ``cfg`` is either the ``training`` group (then pass ``num_classes``) or the whole composed
    config (``training.loss``, ``training.include_background`` and ``model.num_classes`` are
    read from it; an explicit ``num_classes`` wins).

    Raises:
        ConfigError: ``training.loss`` is not one of ``dice+ce``, ``dice``, ``ce``, or the number
            of classes is unknown.
    """
    from unet3d.errors import ConfigError

    training_cfg = cfg.get("training", None) if hasattr(cfg, "get") else None
    if training_cfg is None:
        training_cfg = cfg
    elif num_classes is None:
        model_cfg = cfg.get("model", None)
        if model_cfg is not None:
            num_classes = model_cfg.get("num_classes", None)
    if num_classes is None:
        raise ConfigError("model.num_classes: needed by the loss, got nothing")
    num_classes = int(num_classes)
    loss_name = str(training_cfg.get("loss", "dice+ce"))
    include_background = bool(training_cfg.get("include_background", False))
    if loss_name not in LOSSES:
        raise ConfigError(f"training.loss: must be one of {', '.join(LOSSES)}, got {loss_name!r}")
    if num_classes < 2 and not include_background:
        raise ConfigError(
            f"model.num_classes: must be >= 2 without training.include_background, "
            f"got {num_classes}"
        )

    def loss_fn(labels: Any, probabilities: Any) -> tuple[Any, dict[str, Any]]:
        """Per-sample loss of ``training.loss`` (see ``segmentation_loss``)."""
        return segmentation_loss(
            labels,
            probabilities,
            num_classes=num_classes,
            loss=loss_name,
            include_background=include_background,
        )

    logger.debug(
        "loss %s over %d classes (background %s)",
        loss_name,
        num_classes,
        "included" if include_background else "excluded",
    )
    return loss_fn
