"""Tests of the Dice / cross-entropy segmentation losses."""

import math

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from unet3d.errors import ConfigError
from unet3d.training.losses import SegmentationLoss, build_loss, segmentation_loss

# 8 voxels as a 2x2x2 volume: class counts 4, 2, 1, 1.
LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 3], dtype=np.int32).reshape(1, 2, 2, 2)


def one_hot(labels, num_classes=4):
    return np.eye(num_classes, dtype=np.float32)[labels]


def uniform(labels, num_classes=4):
    return np.full((*labels.shape, num_classes), 1.0 / num_classes, dtype=np.float32)


def test_perfect_prediction_gives_zero_loss():
    total, parts = segmentation_loss(LABELS, one_hot(LABELS))
    assert total.shape == (1,)
    assert float(parts["dice_loss"][0]) == pytest.approx(0.0, abs=1e-5)
    assert float(parts["ce_loss"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(total[0]) == pytest.approx(0.0, abs=1e-5)


def test_uniform_prediction_matches_hand_computation():
    # sum(p) per class = 8/4 = 2; intersections = count/4.
    # dice1 = 2*0.5/(2+2) = 1/4, dice2 = dice3 = 2*0.25/(1+2) = 1/6, dice0 = 2*1/(4+2) = 1/3.
    foreground = ((1 - 1 / 4) + 2 * (1 - 1 / 6)) / 3
    with_background = ((1 - 1 / 3) + (1 - 1 / 4) + 2 * (1 - 1 / 6)) / 4
    total, parts = segmentation_loss(LABELS, uniform(LABELS))
    assert float(parts["dice_loss"][0]) == pytest.approx(foreground, rel=1e-5)
    assert float(parts["ce_loss"][0]) == pytest.approx(math.log(4), rel=1e-6)
    assert float(total[0]) == pytest.approx(foreground + math.log(4), rel=1e-5)
    _, parts = segmentation_loss(LABELS, uniform(LABELS), include_background=True)
    assert float(parts["dice_loss"][0]) == pytest.approx(with_background, rel=1e-5)
    assert with_background != pytest.approx(foreground)


def test_loss_selection():
    probabilities = uniform(LABELS)
    dice_total, parts = segmentation_loss(LABELS, probabilities, loss="dice")
    np.testing.assert_allclose(dice_total, parts["dice_loss"])
    ce_total, parts = segmentation_loss(LABELS, probabilities, loss="ce")
    np.testing.assert_allclose(ce_total, parts["ce_loss"])
    with pytest.raises(ValueError):
        segmentation_loss(LABELS, probabilities, loss="focal")
    with pytest.raises(ValueError):
        segmentation_loss(LABELS * 0, uniform(LABELS, 1), num_classes=1)


def test_cross_entropy_is_mean_negative_log_probability_per_sample():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(3, 4, 4, 2))
    logits = rng.normal(size=(3, 4, 4, 2, 4))
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    total, parts = segmentation_loss(labels, probabilities.astype(np.float32), loss="ce")
    picked = np.take_along_axis(probabilities, labels[..., None], axis=-1)[..., 0]
    expected = -np.log(picked).mean(axis=(1, 2, 3))
    assert total.shape == (3,)
    np.testing.assert_allclose(parts["ce_loss"], expected, rtol=1e-5)
    # per-sample: each entry equals the loss of that sample alone
    for index in range(3):
        single, _ = segmentation_loss(labels[index : index + 1], probabilities[index : index + 1])
        full, _ = segmentation_loss(labels, probabilities)
        assert float(single[0]) == pytest.approx(float(full[index]), rel=1e-5)


def test_zero_probabilities_are_clipped_and_gradients_finite():
    labels = tf.constant(LABELS.astype(np.uint8))
    probabilities = tf.Variable(np.roll(one_hot(LABELS), 1, axis=-1))  # all wrong, zeros on truth
    with tf.GradientTape() as tape:
        total, parts = segmentation_loss(labels, probabilities)
    gradient = tape.gradient(total, probabilities)
    assert np.isfinite(float(total[0]))
    assert float(parts["ce_loss"][0]) == pytest.approx(-math.log(1e-7), rel=1e-4)
    assert np.all(np.isfinite(gradient.numpy()))


def test_low_precision_probabilities_are_cast():
    total, _ = segmentation_loss(LABELS, tf.constant(uniform(LABELS), dtype=tf.bfloat16))
    assert total.dtype == tf.float32


def test_segmentation_loss_component_is_the_function():
    loss_fn = SegmentationLoss(name="dice", num_classes=4, include_background=True, smooth=1e-5)
    total, _ = loss_fn(LABELS, uniform(LABELS))
    expected, _ = segmentation_loss(LABELS, uniform(LABELS), loss="dice", include_background=True)
    np.testing.assert_allclose(total, expected)
    assert SegmentationLoss(**loss_fn.get_config()).get_config() == loss_fn.get_config()
    with pytest.raises(ValueError, match="focal"):
        SegmentationLoss(name="focal", num_classes=4, include_background=False, smooth=1e-5)


def test_build_loss_from_the_default_group():
    """conf/loss/default.yaml: loss.name and loss.include_background choose the loss."""
    from tests.test_config import compose_config

    cfg = compose_config("loss.name=dice", "loss.include_background=true")
    loss_fn = build_loss(cfg.loss, num_classes=4)
    assert isinstance(loss_fn, SegmentationLoss)
    assert (loss_fn.name, loss_fn.include_background, loss_fn.num_classes) == ("dice", True, 4)
    total, parts = build_loss(compose_config().loss, 4)(LABELS, uniform(LABELS))
    np.testing.assert_allclose(total, parts["dice_loss"] + parts["ce_loss"], rtol=1e-6)


def test_build_loss_errors_name_the_group():
    with pytest.raises(ConfigError, match=r"^loss\._target_: .*SegmentationLoss.*focal"):
        build_loss(OmegaConf.create({"_target_": "unet3d.training.losses.SegmentationLoss",
                                     "name": "focal", "num_classes": 4,
                                     "include_background": False, "smooth": 1e-5}),
                   num_classes=4)
