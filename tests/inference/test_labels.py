"""The labeler: a model's probabilities to the label values of the data set it segments."""

import numpy as np
import pytest

from unet3d.data.layouts.convention import BRATS2019, BRATS2023, MSD_BRAIN, LabelConvention
from unet3d.errors import ConfigError
from unet3d.inference.labels import make_labeler, value_translation


def _one_hot(classes: np.ndarray, depth: int) -> np.ndarray:
    return np.eye(depth, dtype=np.float32)[classes]


CLASSES = np.array([[[0, 1, 2, 3]]])  # background, NCR/NETC, ED/SNFH, ET of a 2019 model


def test_default_is_argmax_in_brats_2019_labels():
    labels = make_labeler()(_one_hot(CLASSES, 4))
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[[0, 1, 2, 4]]]


@pytest.mark.parametrize("target, expected", [
    (BRATS2023, [0, 1, 2, 3]),  # same tissues, ET is 3 since 2023
    (MSD_BRAIN, [0, 2, 1, 3]),  # MSD: 1 edema, 2 non-enhancing tumour, 3 enhancing
    (BRATS2019, [0, 1, 2, 4]),
])
def test_a_2019_model_writes_the_target_data_sets_labels(target, expected):
    labels = make_labeler(BRATS2019, target)(_one_hot(CLASSES, 4))
    assert labels.ravel().tolist() == expected


def test_an_msd_model_on_brats_2019_files():
    # MSD classes: 0 bg, 1 edema, 2 non-enhancing, 3 enhancing.
    labels = make_labeler(MSD_BRAIN, BRATS2019)(_one_hot(CLASSES, 4))
    assert labels.ravel().tolist() == [0, 2, 1, 4]
    assert value_translation(MSD_BRAIN, BRATS2019).tolist() == [0, 2, 1, 4]


def test_classes_the_target_cannot_write_are_one_error():
    post = LabelConvention("brats2024_post", {0: "background", 1: "NETC", 2: "SNFH", 3: "ET",
                                              4: "RC"},
                           {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3), "RC": (4,)})
    with pytest.raises(ConfigError, match="RC"):
        make_labeler(post, BRATS2019)
    # The other way round works: the 2019 model never predicts a resection cavity.
    labels = make_labeler(BRATS2019, post)(_one_hot(CLASSES, 4))
    assert labels.ravel().tolist() == [0, 1, 2, 3]


def test_the_predictor_follows_the_trained_head_not_the_jobs():
    # A region-head model predicted by a job whose model.head is the default softmax: outside
    # the brain box every region probability must be 0 (no background channel to set to 1).
    import keras
    from omegaconf import OmegaConf

    from unet3d.inference.job_setup import job_predictor

    inputs = keras.Input((None, None, None, 4))
    model = keras.Model(inputs, keras.layers.Conv3D(3, 1, activation="sigmoid")(inputs))
    cfg = OmegaConf.create({"model": {"head": "softmax"}, "data": {"crop_size": [8, 8, 8]},
                            "inference": {"window_size": None, "overlap": 0.5,
                                          "blend": "gaussian", "batch_size": 1, "tta": False,
                                          "crop_to_brain": True, "crop_margin": 0,
                                          "single_window": False}})
    assert job_predictor(cfg, [model], False).background_class == 0
    assert job_predictor(cfg, [model], False, head="regions").background_class is None
