"""Tests of the output heads (unet3d.model.heads): softmax over classes, sigmoid per region."""

from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from unet3d.errors import ConfigError
from unet3d.model.build import build_model_from_config, check_model
from unet3d.model.heads import output_channels
from unet3d.model.unet3d import build_unet3d, count_forward_flops

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"in_channels": 4, "num_classes": 4, "base_filters": 4, "max_filters": 8,
         "num_levels": 3, "norm": "none"}


def model_cfg(**overrides):
    cfg = yaml.safe_load((ROOT / "conf" / "model" / "unet3d.yaml").read_text())
    cfg.update(SIZES, **overrides)
    return cfg


#: build_unet3d's arguments: conf/model/unet3d.yaml at tiny sizes, the head left to each test.
TINY = {key: value for key, value in model_cfg().items() if key not in ("_target_", "head")}


def test_region_head_has_one_sigmoid_channel_per_region():
    model = build_model_from_config(model_cfg(head="regions"))
    assert tuple(model.outputs[0].shape) == (None, None, None, None, 3)
    image = np.random.default_rng(0).normal(size=(1, 8, 8, 8, 4)).astype(np.float32) * 50
    values = np.asarray(model(image))
    assert values.shape == (1, 8, 8, 8, 3) and values.dtype == np.float32
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert not np.allclose(values.sum(axis=-1), 1.0)  # not a softmax
    assert build_model_from_config(model_cfg(head="regions", num_regions=5)).outputs[0].shape[-1] \
        == 5


def test_softmax_head_is_unchanged():
    softmax = build_unet3d(**TINY, head="softmax")
    regions = build_unet3d(**TINY, head="regions")
    assert softmax.outputs[0].shape[-1] == 4
    assert softmax.layers[-1].name == regions.layers[-1].name == "probabilities"
    # the head convolution: 27 * 4 filters * channels + channels
    assert softmax.count_params() - regions.count_params() == 27 * 4 + 1
    flops = count_forward_flops({**TINY, "head": "regions"}, 16) - count_forward_flops(TINY, 16)
    assert flops == -2.0 * 16**3 * 27 * 4


def test_region_head_under_mixed_precision_outputs_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet3d(**TINY, head="regions")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert str(model.outputs[0].dtype) == "float32"


def test_contract_names_the_region_key():
    model = build_unet3d(**TINY, head="regions")
    with pytest.raises(ConfigError, match="has 3 channels .*model.num_regions is 4"):
        check_model(model, 4, 4, target="x", head="regions")


def test_output_channels():
    assert output_channels({"num_classes": 4}) == 4
    assert output_channels({"num_classes": 4, "head": "regions"}) == 3
    assert output_channels({"num_classes": 4, "head": "regions", "num_regions": 2}) == 2
