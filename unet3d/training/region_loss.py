"""The loss of the ``regions`` head: binary cross-entropy plus soft Dice per region.

nnU-Net's region-based training (Isensee et al., "nnU-Net for Brain Tumor Segmentation",
BrainLes 2020; nnU-Net v2 ``DC_and_BCE_loss``): the network predicts one sigmoid channel per
painted region of the data set (BraTS: WT, TC, ET; ``unet3d.data.layouts.regions``), and the
loss compares each channel with that region's mask. The targets come from the integer training
classes through a ``[num_classes, R]`` 0/1 table (class ``k`` is disk value
``convention.values[k]``; the table says which regions hold it), gathered in TensorFlow.

Per sample ``b`` and region ``r``, sums over the voxels of the crop (``t`` target, ``p``
probability):

- ``bce_loss[b] = mean over voxels and regions of -(t log p + (1 - t) log(1 - p))``, ``p``
  clipped to ``[1e-7, 1 - 1e-7]``;
- ``dice[b, r] = 2 * sum(t * p) / (sum(t) + sum(p) + smooth)`` (``smooth = 1e-5`` in the
  denominator only, as the class loss of ``unet3d.training.losses``), and
  ``dice_loss[b] = mean over regions of (1 - dice[b, r])``;
- ``total = bce_weight * bce_loss + dice_weight * dice_loss``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from unet3d.data.layouts.regions import class_region_table, painted_regions
from unet3d.errors import ConfigError

logger = logging.getLogger(__name__)

#: Probabilities are clipped to [PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON] before logs.
PROBABILITY_EPSILON = 1e-7
def as_convention(convention: Any) -> Any:
    """The ``LabelConvention`` of a convention, its ``to_dict()`` form, or None (BraTS 2019).

    Raises:
        ConfigError: a mapping that ``LabelConvention.from_dict`` rejects.
    """
    from unet3d.data.layouts.convention import BRATS2019, LabelConvention

    if convention is None:
        return BRATS2019
    if isinstance(convention, Mapping):
        try:
            return LabelConvention.from_dict(convention)
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"loss.convention: not a label convention ({error!r}); expected "
                              f"name, labels, regions, region_order") from None
    return convention


def region_loss(labels: Any, probabilities: Any, table: Any, smooth: float = 1e-5,
                bce_weight: float = 1.0, dice_weight: float = 1.0) -> tuple[Any, dict[str, Any]]:
    """Per-sample BCE + soft Dice of region probabilities against class labels.

    Args:
        labels: integer training classes ``[B, h, w, d]`` (values ``0..K-1``).
        probabilities: sigmoid region probabilities ``[B, h, w, d, R]`` (cast to float32).
        table: float32 ``[K, R]`` 0/1 table, class ``k`` in region ``r``
            (``unet3d.data.layouts.regions.class_region_table``).
        smooth: denominator epsilon of the soft Dice.
        bce_weight, dice_weight: weights of the two terms in the total.

    Returns:
        ``(total, {"dice_loss": dice, "bce_loss": bce})``, each float32 ``[B]``.
    """
    import tensorflow as tf

    probabilities = tf.cast(probabilities, tf.float32)
    targets = tf.gather(tf.constant(table, dtype=tf.float32), tf.cast(labels, tf.int32))
    spatial_axes = [1, 2, 3]
    intersection = tf.reduce_sum(targets * probabilities, axis=spatial_axes)  # [B, R]
    denominator = tf.reduce_sum(targets, axis=spatial_axes) + tf.reduce_sum(
        probabilities, axis=spatial_axes)
    dice = 2.0 * intersection / (denominator + smooth)
    dice_loss = tf.reduce_mean(1.0 - dice, axis=-1)
    clipped = tf.clip_by_value(probabilities, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
    entropy = -(targets * tf.math.log(clipped) + (1.0 - targets) * tf.math.log(1.0 - clipped))
    bce_loss = tf.reduce_mean(entropy, axis=[1, 2, 3, 4])
    total = bce_weight * bce_loss + dice_weight * dice_loss
    return total, {"dice_loss": dice_loss, "bce_loss": bce_loss}


class RegionLoss:
    """BCE + soft Dice per painted region: the loss of ``model.head=regions``.

    The ``_target_`` of ``conf/loss/regions.yaml``.

    Args:
        num_classes: training classes K of the labels (``model.num_classes``).
        convention: the data set's label convention (a ``LabelConvention``, its
            ``to_dict()`` form, or None: BraTS 2019, labels 0, 1, 2, 4, regions WT, TC, ET).
        smooth: denominator epsilon of the soft Dice.
        bce_weight, dice_weight: weights of the two terms.

    Raises:
        ValueError: the convention has another number of classes than ``num_classes``, or no
            nested regions to predict (``unet3d.data.layouts.regions.painted_regions``).
    """

    def __init__(self, num_classes: int, convention: Any, smooth: float, bce_weight: float,
                 dice_weight: float) -> None:
        resolved = as_convention(convention)
        self.table = class_region_table(resolved)
        if self.table.shape[0] != int(num_classes):
            raise ValueError(f"loss.num_classes: the convention {getattr(resolved, 'name', '')} "
                             f"has {self.table.shape[0]} classes, got {num_classes}")
        self.convention = convention
        self.regions: Sequence[str] = painted_regions(resolved)
        self.num_classes = int(num_classes)
        self.num_regions = len(self.regions)
        self.smooth = float(smooth)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)

    def __call__(self, labels: Any, probabilities: Any) -> tuple[Any, dict[str, Any]]:
        """Per-sample loss of int32 classes ``[B, h, w, d]`` and probabilities ``[B, h, w, d, R]``.

        Returns:
            ``(total [B], {"dice_loss": [B], "bce_loss": [B]})``, float32.
        """
        return region_loss(labels, probabilities, self.table, smooth=self.smooth,
                           bce_weight=self.bce_weight, dice_weight=self.dice_weight)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (``RegionLoss(**config)`` rebuilds it)."""
        convention = self.convention
        if convention is not None and not isinstance(convention, Mapping):
            convention = convention.to_dict() if hasattr(convention, "to_dict") else None
        return {"num_classes": self.num_classes, "convention": convention,
                "smooth": self.smooth, "bce_weight": self.bce_weight,
                "dice_weight": self.dice_weight}

    def __repr__(self) -> str:
        """``RegionLoss(regions=[...], num_classes=..., ...)``."""
        return (f"RegionLoss(regions={list(self.regions)}, num_classes={self.num_classes}, "
                f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight})")

