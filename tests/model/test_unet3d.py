"""Tests of the 3D U-Net builder, its parameter count and its analytic FLOP count."""

from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from unet3d.model.build import build_model_from_config
from unet3d.model.unet3d import (
    build_unet3d,
    count_forward_flops,
    group_count,
    level_filters,
)

CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"
SIZES = {"in_channels": 4, "num_classes": 4, "base_filters": 4, "max_filters": 8, "num_levels": 3}


@pytest.fixture
def mixed_bfloat16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def expected_parameters(
    in_channels, num_classes, base_filters, max_filters, num_levels, norm="instance", head=3
):
    """Parameter count derived from the architecture description, independently of the model."""
    widths = [min(base_filters * 2**level, max_filters) for level in range(num_levels)]
    per_channel = {"instance": 2, "group": 2, "batch": 4, "none": 1}[norm]  # gamma/beta (+stats)

    def conv_unit(cin, cout):
        return 27 * cin * cout + per_channel * cout  # no bias when normalised; bias when "none"

    total = conv_unit(in_channels, widths[0]) + conv_unit(widths[0], widths[0])
    for level in range(1, num_levels):
        total += conv_unit(widths[level - 1], widths[level]) + conv_unit(
            widths[level], widths[level]
        )
    for level in range(num_levels - 2, -1, -1):
        total += 8 * widths[level + 1] * widths[level] + widths[level]  # transposed conv + bias
        total += conv_unit(2 * widths[level], widths[level]) + conv_unit(
            widths[level], widths[level]
        )
    total += head**3 * widths[0] * num_classes + num_classes
    return total


def load_model_cfg(name):
    cfg = yaml.safe_load((CONF_MODEL / f"{name}.yaml").read_text())
    if "defaults" in cfg:
        base = load_model_cfg("unet3d")
        base.update({key: value for key, value in cfg.items() if key != "defaults"})
        cfg = base
    return cfg


#: build_unet3d's arguments: conf/model/unet3d.yaml at tiny sizes.
TINY = {**{key: value for key, value in load_model_cfg("unet3d").items() if key != "_target_"},
        **SIZES}


def unet(**overrides):
    """The tiny U-Net, ``overrides`` replacing arguments of ``TINY``."""
    return build_unet3d(**{**TINY, **overrides})


def test_reference_parameter_count_matches_architecture():
    cfg = load_model_cfg("unet3d")
    assert cfg["output_kernel_size"] == 3  # conf/model/unet3d.yaml: the reference's head
    model = build_model_from_config(cfg)
    expected = expected_parameters(4, 4, 32, 320, 6, head=3)
    assert expected == 31_196_196  # REFERENCE.md's bare Keras model
    assert model.count_params() == expected
    # A 1x1x1 head has 26*32*4 fewer weights.
    head1 = build_model_from_config({**cfg, "output_kernel_size": 1})
    assert head1.count_params() == expected_parameters(4, 4, 32, 320, 6, head=1) == 31_192_868
    assert expected - head1.count_params() == 26 * 32 * 4


def test_the_factory_takes_every_setting_from_the_reference_config():
    """One home per setting: build_unet3d has no defaults but input_shape (not a setting), and
    its arguments are the keys of conf/model/unet3d.yaml."""
    import inspect

    cfg = load_model_cfg("unet3d")
    assert cfg.pop("_target_") == "unet3d.model.unet3d.build_unet3d"
    defaults = {name: parameter.default
                for name, parameter in inspect.signature(build_unet3d).parameters.items()}
    assert defaults.pop("input_shape") is None
    assert set(defaults) == set(cfg)
    assert all(default is inspect.Parameter.empty for default in defaults.values())


def test_flops_count_the_unet_only():
    with pytest.raises(ValueError, match="counts unet3d.model.unet3d.build_unet3d only"):
        count_forward_flops({"_target_": "my.Net", "num_levels": 3}, 32)
    with pytest.raises(KeyError):  # every size comes from the group (conf/model/)
        count_forward_flops({"num_levels": 3}, 32)


def test_small_config_and_3x3x3_head_parameter_counts():
    cfg = load_model_cfg("unet3d_small")
    model = build_model_from_config(cfg)
    assert model.count_params() == expected_parameters(4, 4, 8, 64, 4, head=3)
    head3 = unet(output_kernel_size=3)
    assert head3.count_params() == expected_parameters(**SIZES, head=3)


@pytest.mark.parametrize("norm", ["instance", "group", "batch", "none"])
def test_each_norm_builds_and_outputs_probabilities(norm):
    model = unet(norm=norm)
    assert model.count_params() == expected_parameters(**SIZES, norm=norm)
    image = np.random.default_rng(0).normal(size=(2, 16, 8, 12, 4)).astype(np.float32)
    output = model(image, training=False)
    assert tuple(output.shape) == (2, 16, 8, 12, 4)
    assert output.dtype == "float32"
    np.testing.assert_allclose(np.sum(np.asarray(output), axis=-1), 1.0, atol=1e-5)


def test_layers_follow_the_architecture():
    model = unet()
    assert model.input_shape == (None, None, None, None, 4)
    assert model.output_shape == (None, None, None, None, 4)
    convs = [layer for layer in model.layers if type(layer) is keras.layers.Conv3D]
    assert all(not layer.use_bias for layer in convs if layer.name != "head_conv")
    assert model.get_layer("head_conv").kernel_size == (3, 3, 3)  # the reference's head
    assert [layer.strides for layer in convs].count((2, 2, 2)) == TINY["num_levels"] - 1
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert norms and all(layer.groups == layer.gamma.shape[0] for layer in norms)
    assert all(layer.epsilon == 1e-6 for layer in norms)
    leaky = [layer for layer in model.layers if isinstance(layer, keras.layers.LeakyReLU)]
    assert all(abs(layer.negative_slope - 0.01) < 1e-9 for layer in leaky)
    final = model.layers[-1]
    assert isinstance(final, keras.layers.Activation) and final.dtype_policy.name == "float32"


def test_group_normalization_with_groups_minus_one_is_instance_norm():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(2, 4, 5, 3, 6)).astype(np.float32)
    layer = keras.layers.GroupNormalization(groups=-1, epsilon=1e-6)
    layer.build(x.shape)
    gamma = rng.normal(size=6).astype(np.float32)
    beta = rng.normal(size=6).astype(np.float32)
    layer.set_weights([gamma, beta])
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    variance = x.var(axis=(1, 2, 3), keepdims=True)
    expected = (x - mean) / np.sqrt(variance + 1e-6) * gamma + beta
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-4, atol=1e-4)
    assert len(layer.trainable_weights) == 2


def test_group_count():
    assert group_count(320) == 16
    assert group_count(32) == 16
    assert group_count(8) == 8
    assert group_count(4) == 4
    assert group_count(24) == 12
    assert group_count(20) == 10
    model = unet(max_filters=16, norm="group")
    groups = {
        layer.gamma.shape[0]: layer.groups
        for layer in model.layers
        if isinstance(layer, keras.layers.GroupNormalization)
    }
    assert groups == {4: 4, 8: 8, 16: 16}


def test_mixed_bfloat16_keeps_float32_variables_and_output(mixed_bfloat16):
    model = unet()
    conv = model.get_layer("input_block_1_conv")
    assert conv.compute_dtype == "bfloat16"
    assert conv.variable_dtype == "float32"
    assert all(variable.dtype == "float32" for variable in model.weights)
    image = np.random.default_rng(2).normal(size=(1, 8, 8, 8, 4)).astype(np.float32)
    output = model(image, training=False)
    assert output.dtype == "float32"
    np.testing.assert_allclose(np.sum(np.asarray(output), axis=-1), 1.0, atol=1e-5)
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"


def test_config_round_trip_and_keras_file(tmp_path):
    model = unet(norm="group")
    image = np.random.default_rng(3).normal(size=(1, 8, 8, 8, 4)).astype(np.float32)
    expected = np.asarray(model(image, training=False))

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(image, training=False)), expected, atol=1e-6)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(image, training=False)), expected, atol=1e-6)


def test_static_input_shape():
    model = unet(input_shape=(16, 8, 12))
    assert model.input_shape == (None, 16, 8, 12, 4)
    model = unet(input_shape=(None, 8, None, 4))
    assert model.input_shape == (None, None, 8, None, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "layer"},
        {"base_filters": 0},
        {"num_levels": 0},
        {"in_channels": 0},
        {"num_classes": 0},
        {"base_filters": 4.5},
        {"input_shape": (18, 16, 16)},
        {"input_shape": (16, 16)},
        {"input_shape": (16, 16, 16, 3)},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        unet(**kwargs)


def test_level_filters():
    assert level_filters(32, 320, 6) == [32, 64, 128, 256, 320, 320]
    assert level_filters(8, 64, 4) == [8, 16, 32, 64]


def flops_from_layers(model):
    """2 x multiply-adds of every (transposed) convolution, read from a model with static shapes."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv3DTranspose):
            in_voxels = int(np.prod(layer.input.shape[1:4]))
            total += (
                in_voxels * int(np.prod(layer.kernel_size)) * layer.input.shape[-1] * layer.filters
            )
        elif isinstance(layer, keras.layers.Conv3D):
            out_voxels = int(np.prod(layer.output.shape[1:4]))
            total += (
                out_voxels * int(np.prod(layer.kernel_size)) * layer.input.shape[-1] * layer.filters
            )
    return 2.0 * total


@pytest.mark.parametrize("head", [1, 3])
def test_flops_match_the_layers_of_a_built_model(head):
    cfg = {**TINY, "output_kernel_size": head}
    model = unet(input_shape=(16, 8, 12), output_kernel_size=head)
    assert count_forward_flops(cfg, (16, 8, 12)) == flops_from_layers(model)


def test_reference_flops():
    head3 = load_model_cfg("unet3d")
    # REFERENCE.md: 979.6 GFLOP at 128^3, 122.4 at 64^3 for the bare reference model (3x3x3 head).
    cfg = {**head3, "output_kernel_size": 1}
    assert count_forward_flops(head3, 128) == pytest.approx(979.6e9, rel=1e-3)
    assert count_forward_flops(head3, 64) == pytest.approx(122.4e9, rel=1e-3)
    # A 1x1x1 head saves 2 * 26 * 32 * 4 FLOPs per voxel.
    for side in (64, 128):
        saved = 2 * 26 * 32 * 4 * side**3
        assert count_forward_flops(cfg, side) == count_forward_flops(head3, side) - saved
    assert count_forward_flops(cfg, 128) == pytest.approx(979.6e9, rel=0.015)
    assert count_forward_flops(cfg, (128, 128, 128)) == count_forward_flops(cfg, 128)


def test_flops_reject_indivisible_shapes():
    with pytest.raises(ValueError):
        count_forward_flops(load_model_cfg("unet3d"), (128, 128, 155))
