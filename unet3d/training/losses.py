"""The loss component: the built-in segmentation losses, and any loss of the ``loss`` group.

Built-in losses (``conf/loss/default.yaml``: ``SegmentationLoss`` named by ``loss.name``),
per sample ``b`` and class ``k``, sums over the voxels of the crop:

- soft Dice ``dice[b, k] = 2 * sum(y * p) / (sum(y) + sum(p) + smooth)`` (the reference's
  form, ``smooth = 1e-5`` in the denominator only);
- ``dice_loss[b] = mean over the scored classes of (1 - dice[b, k])``; the scored classes are the
  foreground classes 1..K-1, or all K with ``include_background``. Taking the mean (the
  reference sums) keeps the loss in [0, 1] whatever the number of classes. A class absent from
  both label and prediction scores Dice 0, i.e. a constant 1 in the mean with no gradient;
- ``ce_loss[b] = mean over voxels of -log(clip(p[label], 1e-7, 1))``;
- ``dice+ce`` is ``dice_loss + ce_loss``.

The contract of every loss (``docs/contracts.md``), checked by ``build_loss`` before training:
``loss_fn(labels, probabilities) -> (total, parts)`` with labels int32 ``[B, h, w, d]``,
probabilities float32 ``[B, h, w, d, K]``, ``total`` float32 ``[B]`` (one value per sample;
the training loop sums and divides by the global batch size), differentiable in the
probabilities, and ``parts`` a dict of named float32 ``[B]`` terms that are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from unet3d.config import LOSSES
from unet3d.config.components import check_contract, instantiate, one_line

logger = logging.getLogger(__name__)

#: ``loss_fn(labels, probabilities) -> (per-sample total [B], {name: per-sample term [B]})``.
LossFn = Callable[[Any, Any], tuple[Any, dict[str, Any]]]
#: Probabilities are clipped to [PROBABILITY_EPSILON, 1] before the logarithm.
PROBABILITY_EPSILON = 1e-7
#: Shape (B, h, w, d) of the probe batch of ``check_loss``.
PROBE_SHAPE = (2, 4, 4, 4)


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
        loss: one of ``unet3d.config.LOSSES``: ``"dice+ce"``, ``"dice"`` or ``"ce"``.
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


class SegmentationLoss:
    """The built-in loss: soft Dice, cross-entropy or their sum, per sample.

    The ``_target_`` of ``conf/loss/default.yaml`` (its keys are the arguments;
    ``num_classes: ${model.num_classes}``).

    Args:
        name: one of ``unet3d.config.LOSSES``: ``dice+ce``, ``dice`` or ``ce``.
        num_classes: number of classes ``K`` of the probabilities.
        include_background: score class 0 in the Dice term too.
        smooth: denominator epsilon of the soft Dice.

    Raises:
        ValueError: unknown ``name``, or no class left to score in the Dice term.
    """

    def __init__(self, name: str, num_classes: int, include_background: bool,
                 smooth: float) -> None:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
        if num_classes < 2 and not include_background:
            raise ValueError(f"num_classes={num_classes} leaves no class to score without "
                             f"include_background")
        self.name = name
        self.num_classes = int(num_classes)
        self.include_background = bool(include_background)
        self.smooth = float(smooth)

    def __call__(self, labels: Any, probabilities: Any) -> tuple[Any, dict[str, Any]]:
        """Per-sample loss of int32 labels ``[B, h, w, d]`` and probabilities ``[B, h, w, d, K]``.

        Returns:
            ``(total [B], {"dice_loss": [B], "ce_loss": [B]})``, float32.
        """
        return segmentation_loss(labels, probabilities, num_classes=self.num_classes,
                                 loss=self.name, include_background=self.include_background,
                                 smooth=self.smooth)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (``SegmentationLoss(**config)`` rebuilds it)."""
        return {"name": self.name, "num_classes": self.num_classes,
                "include_background": self.include_background, "smooth": self.smooth}

    def __repr__(self) -> str:
        """``SegmentationLoss(name=..., ...)``."""
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"SegmentationLoss({arguments})"


def build_loss(loss_cfg: Mapping[str, Any], num_classes: int,
               output_channels: int | None = None, convention: Any = None) -> LossFn:
    """Build the loss that the ``loss`` group names with ``_target_`` and check it.

    Args:
        loss_cfg: the ``loss`` config group (``_target_`` and its arguments).
        num_classes: the model's ``num_classes`` (K), the classes of the labels.
        output_channels: the last axis of the probabilities: K for the softmax head, or the
            region head's R (``unet3d.model.heads.output_channels``); None: the loss's
            ``num_regions`` attribute when it has one, else K.
        convention: the data set's label convention (``LabelConvention`` or its
            ``to_dict()``), passed as the ``convention`` argument when the group has that key
            set to null (``conf/loss/regions.yaml``); a group without the key never gets it.

    Returns:
        ``loss_fn(labels int32 [B, h, w, d], probabilities float32 [B, h, w, d, K or R]) ->
        (total float32 [B], {name: float32 [B]})``.

    Raises:
        ConfigError: one line starting with ``loss._target_``: the target does not import,
            its call fails, or the loss breaks the contract (see ``check_loss``).
    """
    runtime_arguments = {}
    if convention is not None and "convention" in loss_cfg and loss_cfg.get("convention") is None:
        runtime_arguments["convention"] = (convention.to_dict() if hasattr(convention, "to_dict")
                                           else convention)
    loss_fn = instantiate(loss_cfg, "loss", **runtime_arguments)
    if output_channels is None:  # a region loss says how many region channels it scores
        output_channels = getattr(loss_fn, "num_regions", None)
    check_loss(loss_fn, num_classes, str(loss_cfg.get("_target_")), output_channels)
    logger.debug("loss %r over %d classes", loss_fn, num_classes)
    return loss_fn


def check_loss(loss_fn: Any, num_classes: int, target: str = "the loss",
               output_channels: int | None = None) -> None:
    """Call a loss once on a probe batch and check the loss contract.

    The probe: int32 labels ``[2, 4, 4, 4]`` with every class, and softmax probabilities
    ``[2, 4, 4, 4, output_channels]`` (float32, random; each in (0, 1), so they also probe a
    region loss).

    Args:
        loss_fn: what the ``loss`` group's target returned.
        num_classes: number of classes K of the labels.
        target: the ``_target_``, named in errors.
        output_channels: the probabilities' last axis (None: ``num_classes``).

    Raises:
        ConfigError: ``loss._target_: <target> ...``: not callable, the call fails, or the
            result is not ``(float32 [B], dict of float32 [B])`` of finite values with a
            gradient in the probabilities.
    """
    import numpy as np
    import tensorflow as tf

    check_contract(callable(loss_fn), "loss",
                   lambda: f"{target} returned a {type(loss_fn).__name__}, not a callable")
    batch = PROBE_SHAPE[0]
    labels = tf.constant(np.arange(np.prod(PROBE_SHAPE)).reshape(PROBE_SHAPE) % num_classes,
                         dtype=tf.int32)
    channels = int(output_channels or num_classes)
    logits = np.random.default_rng(0).normal(size=(*PROBE_SHAPE, channels))
    probabilities = tf.nn.softmax(tf.constant(logits, dtype=tf.float32), axis=-1)
    try:
        with tf.GradientTape() as tape:
            tape.watch(probabilities)
            result = loss_fn(labels, probabilities)
            total = result[0] if isinstance(result, tuple | list) else None
        gradient = None if total is None else tape.gradient(total, probabilities)
    except Exception as error:  # noqa: BLE001 - any failure breaks the contract
        check_contract(False, "loss", f"{target} fails on int32 labels {PROBE_SHAPE} and "
                                      f"float32 probabilities {(*PROBE_SHAPE, channels)}: "
                                      f"{one_line(error)}")
    check_contract(isinstance(result, tuple | list) and len(result) == 2, "loss", lambda: (
        f"{target} returned {type(result).__name__}; expected (total [B], parts dict)"))
    total, parts = result
    check_contract(isinstance(parts, Mapping), "loss", lambda: (
        f"{target} returned parts of type {type(parts).__name__}; expected a dict of named "
        f"per-sample terms (may be empty)"))
    for name, value in [("total", total), *((f"parts[{key!r}]", part)
                                             for key, part in parts.items())]:
        shape = tuple(getattr(value, "shape", ()))
        check_contract(shape == (batch,), "loss", lambda value=value, name=name, shape=shape: (
            f"{target} {name} has shape {shape}; expected one value per sample, ({batch},)"))
        dtype = getattr(getattr(value, "dtype", None), "name", None) or str(
            getattr(value, "dtype", type(value).__name__))
        check_contract(dtype == "float32", "loss",
                       lambda name=name, dtype=dtype: f"{target} {name} is {dtype}, not float32")
        check_contract(bool(np.all(np.isfinite(np.asarray(value)))), "loss",
                       lambda name=name: f"{target} {name} is not finite on the probe batch")
    check_contract(gradient is not None, "loss", lambda: (
        f"{target} total has no gradient with respect to the probabilities"))
