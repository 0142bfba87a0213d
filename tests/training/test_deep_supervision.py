"""Deep supervision: output count and shapes, nnU-Net's weights, subsampled targets, training
with the loop, and the checkpoint loading into the single-output network."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet3d.errors import ConfigError
from unet3d.model.unet3d import build_unet3d
from unet3d.runtime.devices import DeviceInfo
from unet3d.runtime.distribute import create_context
from unet3d.training.checkpoint import restore_weights
from unet3d.training.deep_supervision import (
    DeepSupervisionLoss,
    apply_deep_supervision,
    deep_supervision_model,
    deep_supervision_weights,
)
from unet3d.training.loop import train
from unet3d.training.losses import SegmentationLoss
from unet3d.training.region_loss import RegionLoss

TINY = {"name": "tiny", "in_channels": 4, "num_classes": 4, "base_filters": 4, "max_filters": 8,
        "num_levels": 4, "norm": "instance", "output_kernel_size": 3, "head": "softmax",
        "num_regions": 3}
ON = {"deep_supervision": True, "deep_supervision_levels": None,
      "deep_supervision_weights": None}
OFF = {**ON, "deep_supervision": False}


def class_loss() -> SegmentationLoss:
    return SegmentationLoss(name="dice+ce", num_classes=4, include_background=False, smooth=1e-5)


def network(seed: int = 0, **overrides) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_unet3d(**{**TINY, **overrides})


def test_nnunet_weights():
    assert deep_supervision_weights(1) == [1.0]
    np.testing.assert_allclose(deep_supervision_weights(3), [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(deep_supervision_weights(5), [16 / 30, 8 / 30, 4 / 30, 2 / 30, 0])
    assert sum(deep_supervision_weights(4)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        deep_supervision_weights(0)


@pytest.mark.parametrize("head, channels", [("softmax", 4), ("regions", 3)])
def test_outputs_count_and_shapes(head, channels):
    model = network(head=head)
    training_model = deep_supervision_model(model, head=head)
    assert len(model.outputs) == 1
    assert len(training_model.outputs) == 3  # num_levels - 1 decoder stages
    outputs = training_model(np.zeros((1, 16, 16, 8, 4), np.float32))
    assert [tuple(output.shape) for output in outputs] == [
        (1, 16, 16, 8, channels), (1, 8, 8, 4, channels), (1, 4, 4, 2, channels)]
    assert all(output.dtype == tf.float32 for output in outputs)
    low = np.asarray(outputs[1])
    if head == "softmax":
        np.testing.assert_allclose(low.sum(axis=-1), 1.0, atol=1e-5)
    else:
        assert low.min() >= 0.0 and low.max() <= 1.0
    assert len(deep_supervision_model(model, 2, head).outputs) == 2
    with pytest.raises(ConfigError, match=r"deep_supervision_levels: must be in \[1, 3\]"):
        deep_supervision_model(model, 4)


def test_a_model_without_the_decoder_layers_is_refused():
    inputs = keras.Input((None, None, None, 4))
    plain = keras.Model(inputs, keras.layers.Conv3D(4, 1, activation="softmax")(inputs))
    with pytest.raises(ConfigError, match="training.deep_supervision: model .* no decoder"):
        apply_deep_supervision(plain, class_loss(), ON, head="softmax")


def test_loss_is_the_weighted_sum_over_subsampled_targets():
    rng = np.random.default_rng(1)
    labels = tf.constant(rng.integers(0, 4, size=(2, 8, 8, 8)), dtype=tf.int32)
    outputs = [tf.nn.softmax(tf.constant(rng.normal(size=(2, side, side, side, 4)),
                                         dtype=tf.float32)) for side in (8, 4, 2)]
    base = class_loss()
    total, parts = DeepSupervisionLoss(base, [0.5, 0.3, 0.2])(labels, outputs)
    expected = (0.5 * base(labels, outputs[0])[0] + 0.3 * base(labels[:, ::2, ::2, ::2],
                                                               outputs[1])[0]
                + 0.2 * base(labels[:, ::4, ::4, ::4], outputs[2])[0])
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    np.testing.assert_allclose(parts["dice_loss"] + parts["ce_loss"], total, rtol=1e-6)
    # one output (inference): the loss as it is
    np.testing.assert_allclose(DeepSupervisionLoss(base, [1.0])(labels, outputs[0])[0],
                               base(labels, outputs[0])[0])
    with pytest.raises(ValueError, match="3 outputs but 2 weights"):
        DeepSupervisionLoss(base, [0.5, 0.5])(labels, outputs)


def test_config_weights_and_off():
    # The weights' count and values are checked by the config (tests/test_config.py).
    model = network()
    assert apply_deep_supervision(model, "loss", OFF, head="softmax") == (model, "loss")
    training_model, loss = apply_deep_supervision(model, class_loss(), ON, head="softmax")
    np.testing.assert_allclose(loss.weights, [2 / 3, 1 / 3, 0.0])
    _, loss = apply_deep_supervision(model, class_loss(),
                                     {**ON, "deep_supervision_weights": [0.6, 0.3, 0.1]},
                                     head="softmax")
    assert loss.weights == [0.6, 0.3, 0.1]


def test_trained_checkpoint_loads_into_the_single_output_network(tmp_path):
    context = create_context({"name": "auto"}, DeviceInfo("CPU", ["/device:CPU:0"]))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(1, 16, 16, 16)).astype(np.int32)

    class Tracker:
        def log_metrics(self, metrics, step=None):
            pass

    with context.scope():
        model = network(seed=3, head="regions")
        training_model, loss_fn = apply_deep_supervision(
            model, RegionLoss(num_classes=4, convention=None, smooth=1e-5, bce_weight=1.0,
                              dice_weight=1.0), ON, head="regions")
        optimizer = keras.optimizers.Adam(0.01)
    result = train(context, training_model, optimizer, loss_fn=loss_fn,
                   input_fn=lambda step: lambda ctx=None: tf.data.Dataset.from_tensors(
                       (images, labels)).repeat(),
                   steps=2, batch_size=1, output_dir=tmp_path, tracker=Tracker(),
                   log_every=1, checkpoint_every=2)
    assert result.checkpoint and np.isfinite(result.history["loss"][-1][1])
    assert set(result.history) >= {"loss", "dice_loss", "bce_loss"}
    # the exported / inference network: one output; the checkpoint restores into a fresh one
    fresh = network(seed=99, head="regions")
    assert len(fresh.outputs) == 1
    restore_weights(fresh, tmp_path)
    for trained, restored in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(trained, restored)
    np.testing.assert_allclose(fresh(images), training_model(images)[0], rtol=1e-5, atol=1e-6)
