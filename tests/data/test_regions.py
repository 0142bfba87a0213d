"""Region probabilities <-> label values (unet3d.data.layouts.regions) for three conventions."""

import numpy as np
import pytest

from unet3d.data.layouts.convention import BRATS2019, BRATS2023, MSD_BRAIN, LabelConvention
from unet3d.data.layouts.regions import (
    class_region_table,
    labels_to_region_masks,
    paint_values,
    painted_regions,
    region_probabilities_to_labels,
)
from unet3d.errors import ConfigError


def hand_volume(values):
    """A 6x6x4 volume: background, then each label value in a block, plus a nested tumour."""
    background, *tumour = values
    labels = np.full((6, 6, 4), background, dtype=np.uint8)
    for index, value in enumerate(tumour):
        labels[index, :3, :] = value          # one stripe per label value
    labels[4:6, 3:6, 1:3] = tumour[-1]        # an island of the last value
    return labels


@pytest.mark.parametrize("convention, expected", [
    (BRATS2019, (0, ("WT", "TC", "ET"), (2, 1, 4))),
    (BRATS2023, (0, ("WT", "TC", "ET"), (2, 1, 3))),
    (MSD_BRAIN, (0, ("WT", "TC", "ET"), (1, 2, 3))),
])
def test_paint_values_from_the_convention(convention, expected):
    background, regions, values = expected
    assert painted_regions(convention) == regions
    assert paint_values(convention) == (background, values)


@pytest.mark.parametrize("convention", [BRATS2019, BRATS2023, MSD_BRAIN])
def test_label_round_trip(convention):
    labels = hand_volume(convention.values)
    masks = labels_to_region_masks(labels, convention)
    assert masks.shape == (*labels.shape, 3) and masks.dtype == bool
    np.testing.assert_array_equal(
        region_probabilities_to_labels(masks.astype(np.float32), convention), labels)
    # ... and back: regions -> labels -> regions
    again = labels_to_region_masks(
        region_probabilities_to_labels(masks.astype(np.float32), convention), convention)
    np.testing.assert_array_equal(again, masks)


@pytest.mark.parametrize("convention", [BRATS2019, BRATS2023, MSD_BRAIN])
def test_empty_regions_round_trip(convention):
    background = convention.values[0]
    empty = np.full((4, 4, 4), background, dtype=np.uint8)
    masks = labels_to_region_masks(empty, convention)
    assert not masks.any()
    np.testing.assert_array_equal(region_probabilities_to_labels(masks * 1.0, convention), empty)
    # a tumour without enhancing tumour (ET empty, WT and TC not)
    no_et = empty.copy()
    _, (outer, core, _) = paint_values(convention)
    no_et[1:3, 1:3, 1:3] = outer
    no_et[2, 2, 2] = core
    masks = labels_to_region_masks(no_et, convention)
    assert masks[..., 0].sum() == 8 and masks[..., 1].sum() == 1 and not masks[..., 2].any()
    np.testing.assert_array_equal(region_probabilities_to_labels(masks * 1.0, convention), no_et)


def test_threshold_and_painting_order_brats2019():
    # one voxel per case: probabilities (WT, TC, ET)
    probabilities = np.array([
        [0.2, 0.1, 0.1],   # nothing -> 0
        [0.9, 0.2, 0.1],   # WT only -> ED 2
        [0.9, 0.8, 0.3],   # TC -> NCR 1
        [0.9, 0.8, 0.7],   # ET -> 4
        [0.4, 0.1, 0.6],   # ET without WT: an inner region overrides (nnU-Net) -> 4
        [0.5, 0.5, 0.5],   # exactly the threshold is not inside (> 0.5)
    ], dtype=np.float32).reshape(6, 1, 1, 3)
    labels = region_probabilities_to_labels(probabilities, BRATS2019)
    assert labels.dtype == np.uint8
    assert labels.ravel().tolist() == [0, 2, 1, 4, 4, 0]
    assert region_probabilities_to_labels(probabilities, BRATS2019,
                                          threshold=0.25).ravel().tolist() == [0, 2, 4, 4, 4, 4]


def test_class_region_table():
    np.testing.assert_array_equal(class_region_table(BRATS2019),
                                  [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(class_region_table(MSD_BRAIN),
                                  [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_default_region_order_keeps_the_nested_chain():
    # BraTS 2023 without region_order: WT, TC, ET, NETC, SNFH by size; NETC is not inside ET.
    unordered = LabelConvention("brats2023", BRATS2023.labels, BRATS2023.regions)
    assert painted_regions(unordered) == ("WT", "TC", "ET")


def test_unpaintable_conventions_are_one_clear_error():
    skipping = LabelConvention("skip", BRATS2019.labels,
                               {"WT": (1, 2, 4), "ET": (4,)}, ("WT", "ET"))
    with pytest.raises(ConfigError, match=r"region WT has values \[1, 2\] not in ET"):
        paint_values(skipping)
    extra = LabelConvention("extra", {0: "background", 1: "NCR", 2: "ED", 4: "ET", 5: "RC"},
                            BRATS2019.regions, ("WT", "TC", "ET"))
    with pytest.raises(ConfigError, match=r"label values \[0, 5\] lie outside region WT"):
        paint_values(extra)
    with pytest.raises(ValueError, match="last axis must hold the 3 painted regions"):
        region_probabilities_to_labels(np.zeros((2, 2, 2, 4), np.float32), BRATS2019)
