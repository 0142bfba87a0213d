"""Tests of the region loss (BCE + soft Dice per painted region) against hand computation."""

import math

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from unet3d.data.layouts.convention import BRATS2019, BRATS2023, MSD_BRAIN
from unet3d.errors import ConfigError
from unet3d.training.losses import build_loss
from unet3d.training.region_loss import RegionLoss, region_loss

CONF_LOSS = "conf/loss/regions.yaml"
# two voxels: class 3 (ET: in WT, TC and ET under BraTS 2019) and background
LABELS = np.array([3, 0], dtype=np.int32).reshape(1, 2, 1, 1)


def loss_of(**overrides) -> RegionLoss:
    """RegionLoss with conf/loss/regions.yaml's values (BraTS's 4 classes; convention None:
    BraTS 2019's), ``overrides`` replacing some."""
    arguments = OmegaConf.to_container(OmegaConf.load(CONF_LOSS))  # not resolved
    arguments.pop("_target_")
    return RegionLoss(**{**arguments, "num_classes": 4, **overrides})


def probabilities(rows):
    return np.asarray(rows, dtype=np.float32).reshape(1, 2, 1, 1, 3)


def test_half_probabilities_match_hand_computation():
    total, parts = loss_of()(LABELS, probabilities([[0.5] * 3, [0.5] * 3]))
    # BCE: -log 0.5 everywhere; Dice per region: 2*0.5 / (1 + 1 + 1e-5)
    dice = 1.0 / (2.0 + 1e-5)
    assert float(parts["bce_loss"][0]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(parts["dice_loss"][0]) == pytest.approx(1 - dice, rel=1e-6)
    assert float(total[0]) == pytest.approx(math.log(2) + 1 - dice, rel=1e-6)


def test_graded_probabilities_match_hand_computation():
    loss = loss_of(bce_weight=2.0, dice_weight=0.5)
    total, parts = loss(LABELS, probabilities([[0.9, 0.8, 0.7], [0.1, 0.2, 0.3]]))
    bce = -(math.log(0.9) + math.log(0.8) + math.log(0.7)) / 3
    dice_loss = ((1 - 1.8 / (2 + 1e-5)) + (1 - 1.6 / (2 + 1e-5)) + (1 - 1.4 / (2 + 1e-5))) / 3
    assert float(parts["bce_loss"][0]) == pytest.approx(bce, rel=1e-5)
    assert float(parts["dice_loss"][0]) == pytest.approx(dice_loss, rel=1e-5)
    assert float(total[0]) == pytest.approx(2.0 * bce + 0.5 * dice_loss, rel=1e-5)


def test_targets_follow_the_convention():
    # class 2 is ED (WT only) in BraTS 2019 but non-enhancing tumour (WT and TC) in MSD.
    labels = np.array([2, 0], dtype=np.int32).reshape(1, 2, 1, 1)
    perfect_2019 = probabilities([[1, 0, 0], [0, 0, 0]])
    perfect_msd = probabilities([[1, 1, 0], [0, 0, 0]])
    _, parts = loss_of(convention=BRATS2019)(labels, perfect_2019)
    assert float(parts["bce_loss"][0]) < 1e-6
    _, parts = loss_of(convention=MSD_BRAIN.to_dict())(labels, perfect_msd)
    assert float(parts["bce_loss"][0]) < 1e-6
    _, parts = loss_of(convention=MSD_BRAIN)(labels, perfect_2019)
    assert float(parts["bce_loss"][0]) > 1.0
    # an empty region predicted empty: Dice 0 by the denominator-only smoothing (constant 1)
    _, parts = region_loss(labels, perfect_2019, loss_of().table)
    assert float(parts["dice_loss"][0]) == pytest.approx(2 / 3, rel=1e-5)


def test_gradient_and_shapes():
    rng = np.random.default_rng(0)
    labels = tf.constant(rng.integers(0, 4, size=(2, 4, 4, 4)), dtype=tf.int32)
    probs = tf.constant(rng.uniform(0.05, 0.95, size=(2, 4, 4, 4, 3)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(probs)
        total, parts = loss_of(convention=BRATS2023)(labels, probs)
    assert total.shape == (2,) and total.dtype == tf.float32
    assert set(parts) == {"dice_loss", "bce_loss"}
    assert np.all(np.isfinite(tape.gradient(total, probs).numpy()))


def test_built_from_config_with_the_data_sets_convention():
    cfg = OmegaConf.load(CONF_LOSS)
    cfg.num_classes = 4
    loss_fn = build_loss(cfg, 4, output_channels=3, convention=MSD_BRAIN)
    np.testing.assert_array_equal(loss_fn.table, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    assert loss_fn.get_config()["convention"] == MSD_BRAIN.to_dict()
    rebuilt = RegionLoss(**loss_fn.get_config())
    np.testing.assert_array_equal(rebuilt.table, loss_fn.table)
    # without a convention: BraTS 2019's; without output_channels: the loss's num_regions
    default = build_loss(cfg, 4)
    np.testing.assert_array_equal(default.table, [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]])


def test_wrong_classes_is_a_config_error():
    cfg = OmegaConf.load(CONF_LOSS)
    cfg.num_classes = 5
    with pytest.raises(ConfigError, match=r"loss._target_: .*has 4 classes, got 5"):
        build_loss(cfg, 5, output_channels=3)
