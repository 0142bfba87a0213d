"""Precision policies, loss scaling and the global-policy side effect."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet3d.errors import ConfigError
from unet3d.runtime.cpu_probe import CpuInfo, ProbeResult
from unet3d.runtime.precision import configure_precision, resolve_policy, wrap_optimizer
from unet3d.runtime.precision_auto import Host

#: A CPU whose (faked) probe runs bfloat16 twice as fast: explicit amp neither probes for real
#: nor warns.
FAST_BF16 = Host(cpu=lambda: CpuInfo("Fake CPU", frozenset({"avx512_bf16"})),
                 probe=lambda: ProbeResult(10.0, 5.0), threads=lambda: 2,
                 tf_version=lambda: "test")


def group(name: str, policy: str, xla: bool = False) -> dict:
    """A ``precision`` group as conf/precision/ spells it."""
    return {"name": name, "policy": policy, "xla": xla, "reprobe": False}


@pytest.fixture(autouse=True)
def restore_policy():
    previous = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize(
    ("policy", "device", "expected"),
    [
        ("mixed", "CPU", "mixed_bfloat16"),
        ("mixed", "GPU", "mixed_float16"),
        ("mixed", "MLU", "mixed_float16"),
        ("float32", "GPU", "float32"),
        ("mixed_bfloat16", "GPU", "mixed_bfloat16"),
        ("mixed_float16", "CPU", "mixed_float16"),
    ],
)
def test_resolve_policy(policy, device, expected):
    assert resolve_policy(policy, device) == expected


def test_auto_is_not_a_fixed_policy():
    with pytest.raises(ValueError, match="depends on the host"):
        resolve_policy("auto", "CPU")


def test_amp_on_cpu_is_bfloat16():
    info = configure_precision(group("amp", "mixed"), "CPU",
                               host=FAST_BF16)
    assert (info.name, info.policy_name) == ("amp", "mixed_bfloat16")
    assert (info.compute_dtype, info.variable_dtype) == ("bfloat16", "float32")
    assert not info.loss_scale and not info.xla
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    assert layer.compute_dtype == "bfloat16" and layer.kernel.dtype == "float32"
    optimizer = keras.optimizers.SGD(0.1)
    assert wrap_optimizer(optimizer, info) is optimizer


def test_fp16_wraps_optimizer_and_trains_one_step(caplog):
    with caplog.at_level(logging.WARNING, logger="unet3d.runtime.precision"):
        info = configure_precision(group("fp16", "mixed_float16"), "CPU")
    assert "slow" in caplog.text
    assert info.loss_scale and info.compute_dtype == "float16"
    # Fixed small weights: with random ones the scaled float16 gradients can overflow and
    # the (correctly) skipped step would leave the weights unchanged.
    dense = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(0.1))
    model = keras.Sequential([keras.Input((3,)), dense])
    optimizer = wrap_optimizer(keras.optimizers.SGD(0.1), info)
    assert isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert wrap_optimizer(optimizer, info) is optimizer
    before = [w.copy() for w in model.get_weights()]
    x = tf.ones((4, 3))
    with tf.GradientTape() as tape:
        output = model(x, training=True)
        assert output.dtype == tf.float16
        loss = tf.reduce_mean(tf.cast(output, tf.float32) ** 2)
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    after = model.get_weights()
    assert float(optimizer.dynamic_scale.numpy()) == optimizer.initial_scale  # step not skipped
    assert all(w.dtype == np.float32 for w in after)
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    assert all(np.isfinite(w).all() for w in after)


def test_xla_flag_passes_through():
    info = configure_precision(group("fp32", "float32", xla=True), "GPU")
    assert info.xla and info.policy_name == "float32" and not info.loss_scale


def _small_unet():
    from unet3d.model.unet3d import build_unet3d

    return build_unet3d(name="small", in_channels=2, num_classes=3, base_filters=4,
                        max_filters=8, num_levels=2, norm="instance", output_kernel_size=3,
                        head="softmax", num_regions=3)


def test_amp_inference_computes_in_bfloat16_and_accumulates_float32():
    from unet3d.inference.ensemble import EnsemblePredictor
    from unet3d.runtime.precision import check_inference_precision, model_dtypes

    fp32_info = configure_precision(group("fp32", "float32"), "CPU")
    keras.utils.set_random_seed(3)
    reference = _small_unet()
    info = configure_precision(group("amp", "mixed"), "CPU",
                               host=FAST_BF16)
    with pytest.raises(ConfigError, match=r"^precision\.policy: model 0 .* computes in float32"):
        check_inference_precision(reference, info)  # built before the policy was set
    model = _small_unet()  # rebuilt under the policy, as load_ensemble does
    model.set_weights(reference.get_weights())
    assert model_dtypes(model) == {"compute": ["bfloat16"], "variables": ["float32"],
                                   "output": "float32"}
    assert check_inference_precision([model], info)[0]["compute"] == ["bfloat16"]
    assert check_inference_precision(reference, fp32_info)[0]["compute"] == ["float32"]

    image = np.random.default_rng(0).normal(size=(12, 10, 8, 2)).astype(np.float32)
    image[:3] = 0.0
    kwargs = {"window_size": (8, 8, 8), "num_classes": 3, "overlap": 0.5, "blend": "gaussian",
              "batch_size": 2, "tta": False, "jit_compile": False, "crop_to_brain": False,
              "background_class": 0, "crop_margin": 0, "single_window": False,
              "input_divisor": 2}
    amp = EnsemblePredictor(model, **kwargs).probabilities(image)
    fp32 = EnsemblePredictor(reference, **kwargs).probabilities(image)
    assert amp.dtype == np.float32 and amp.shape == (12, 10, 8, 3)
    np.testing.assert_allclose(amp.sum(axis=-1), 1.0, rtol=1e-5)  # float32 blending
    assert 0.0 < np.abs(amp - fp32).max() < 0.1  # bfloat16 differs, but little
