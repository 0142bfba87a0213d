"""Label conventions: classes, regions, translation between data sets, JSON round trip."""

import json

import numpy as np
import pytest

from unet3d.data.layouts.convention import (
    BRATS2019,
    BRATS2023,
    MODALITIES,
    MSD_BRAIN,
    LabelConvention,
    convention_from_config,
    tissue_of,
)
from unet3d.data.layouts.resolve import data_config
from unet3d.errors import ConfigError


def test_brats2019_values_classes_and_tissues():
    assert MODALITIES == ("t1", "t1ce", "t2", "flair")
    assert BRATS2019.values == (0, 1, 2, 4) and BRATS2019.num_classes == 4
    assert BRATS2019.tissues == ("background", "NETC", "SNFH", "ET")
    assert BRATS2023.tissues == ("background", "NETC", "SNFH", "ET")
    assert MSD_BRAIN.tissues == ("background", "SNFH", "NETC", "ET")
    labels = np.array([[0, 1], [2, 4]], dtype=np.uint8)
    classes = BRATS2019.to_classes(labels)
    assert classes.dtype == np.uint8 and classes.tolist() == [[0, 1], [2, 3]]
    back = BRATS2019.to_labels(classes)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)
    assert BRATS2023.to_classes(np.array([3, 2])).tolist() == [3, 2]


def test_values_outside_the_convention_are_listed():
    with pytest.raises(ValueError, match=r"label values \[3, 7\] outside \[0, 1, 2, 4\]"):
        BRATS2019.to_classes(np.array([0, 3, 7, 3, 4]))
    with pytest.raises(ValueError, match=r"label values \[4\] outside \[0, 1, 2, 3\]"):
        BRATS2023.to_classes(np.array([4, 1]))
    assert BRATS2019.invalid_values(np.array([-1, 300, 2])) == [-1, 300]
    with pytest.raises(ValueError, match="classes outside 0..3"):
        BRATS2019.to_labels(np.array([4]))


def test_region_masks_follow_each_data_sets_regions():
    labels = np.array([0, 1, 2, 3, 4])
    masks = BRATS2019.region_masks(np.array([0, 1, 2, 4]))
    assert list(masks) == ["WT", "TC", "ET"]
    assert masks["TC"].tolist() == [False, True, False, True]
    msd = MSD_BRAIN.region_masks(labels[:4])
    assert msd["TC"].tolist() == [False, False, True, True]  # MSD: 2 and 3 are the core
    assert list(BRATS2023.region_masks(labels[:4])) == ["ET", "TC", "WT", "NETC", "SNFH"]
    assert BRATS2023.painting_order() == ("WT", "TC", "ET")
    unordered = LabelConvention("x", {0: "bg", 1: "a", 2: "b"}, {"B": (2,), "A": (1, 2)})
    assert unordered.painting_order() == ("A", "B")  # larger value sets first


def test_translation_by_tissue():
    assert BRATS2019.translation_to(BRATS2023).tolist() == [0, 1, 2, 3]
    assert BRATS2023.translation_to(BRATS2019).tolist() == [0, 1, 2, 4]
    # MSD class 1 is edema (BraTS 2019 label 2), class 2 non-enhancing tumour (label 1).
    assert MSD_BRAIN.translation_to(BRATS2019).tolist() == [0, 2, 1, 4]
    post = convention_from_config(**_yaml("brats2024_post"))
    assert post.tissues[-1] == "RC"
    assert BRATS2023.translation_to(post).tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="brats2019 has no label for tissue 'RC'"):
        post.translation_to(BRATS2019)


def test_json_round_trip_and_equality():
    for convention in (BRATS2019, BRATS2023, MSD_BRAIN):
        text = json.dumps(convention.to_dict())
        again = LabelConvention.from_dict(json.loads(text))
        assert again == convention and hash(again) == hash(convention)
        assert again.values == convention.values and again.region_order == convention.region_order


@pytest.mark.parametrize("name, expected", [("brats2019", BRATS2019), ("brats2021", BRATS2019),
                                            ("brats2023", BRATS2023), ("msd_brain", MSD_BRAIN)])
def test_the_yaml_files_declare_the_standard_conventions(name, expected):
    convention = convention_from_config(**_yaml(name))
    assert convention == expected


def _yaml(name):
    cfg = data_config(name)
    return {"name": cfg["convention"], "labels": cfg["labels"], "regions": cfg["regions"],
            "region_order": cfg["region_order"]}


@pytest.mark.parametrize("labels, regions, order, message", [
    ({1: "a"}, {"A": [1]}, None, "must include background 0"),
    ({0: "bg", 1: "a"}, {"A": [2]}, None, r"region A must list label values among \[0, 1\]"),
    ({0: "bg", 1: "a"}, {"A": [1]}, ["B"], r"region_order names unknown region\(s\) \['B'\]"),
    ({"x": "bg"}, {"A": [1]}, None, "data.labels: keys must be integer label values"),
    ({0: "bg", 1: "a"}, {"A": ["one"]}, None, "data.regions.A: must be a list of label values"),
    (None, {"A": [1]}, None, "data.labels: must map label values to names"),
])
def test_bad_declarations(labels, regions, order, message):
    with pytest.raises(ConfigError, match=message):
        convention_from_config("x", labels, regions, order)


def test_tissue_synonyms():
    assert [tissue_of(n) for n in ("NCR/NET", "non-enhancing tumour", "Edema", "oedema",
                                   "enhancing tumor", "Resection cavity", "Other")] == [
        "NETC", "NETC", "SNFH", "SNFH", "ET", "RC", "other"]
