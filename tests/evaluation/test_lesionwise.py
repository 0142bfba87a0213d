"""Lesion-wise Dice/HD95 on hand-built cases whose answers follow from the definition
(``unet3d.evaluation.lesionwise``'s module doc), and the surfel HD95 against DeepMind's code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from tests.evaluation.lesionwise_cases import hand_built_2024_cases, hand_built_cases
from unet3d.data.layouts.convention import BRATS2019, BRATS2023, LabelConvention
from unet3d.evaluation.lesionwise import (
    RULES,
    lesionwise_metrics,
    lesionwise_regions,
    metric_keys,
    region_values,
)
from unet3d.evaluation.surface_distance import robust_hausdorff

CASES = hand_built_cases()
POST = LabelConvention("brats2024_post", {0: "background", 1: "NETC", 2: "SNFH", 3: "ET",
                                          4: "RC"},
                       {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3), "NETC": (1,), "SNFH": (2,),
                        "RC": (4,)})


def _et(name: str, rules: str = "brats2023"):
    pred, ref, spacing = CASES[name]
    rule_set = RULES[rules]
    results = lesionwise_regions(pred, ref, rule_set, region_values(rule_set, BRATS2023), spacing)
    # Only ET (label 3) is painted: WT and TC score the same lesions.
    assert results["WT"] == results["TC"] == results["ET"]
    return results["ET"]


def test_two_lesions_one_missed():
    et = _et("two_lesions_one_missed")
    # Entries: the found lesion (Dice 1, HD95 0) and the missed one (Dice 0, HD95 374).
    assert (et.tp, et.fn, et.fp, et.excluded) == (1, 1, 0, 0)
    assert et.dice == pytest.approx(0.5) and et.hd95 == pytest.approx(187.0)


def test_false_positive_far_away():
    et = _et("false_positive_far")
    assert (et.tp, et.fn, et.fp) == (1, 0, 1)
    assert et.dice == pytest.approx(0.5) and et.hd95 == pytest.approx(187.0)


def test_lesions_merged_by_dilation():
    et = _et("merged_by_dilation")
    # Cubes 4 voxels apart: dilations by 3 overlap, one lesion of 128 voxels, half found.
    assert (et.tp, et.fn, et.fp) == (1, 0, 0)
    assert et.dice == pytest.approx(2 * 64 / (128 + 64))
    pred, ref, _ = CASES["merged_by_dilation"]
    assert et.hd95 == pytest.approx(robust_hausdorff(ref == 3, pred == 3))
    # MET's single dilation leaves them apart: the second is a missed lesion.
    met = _et("merged_by_dilation", "brats2023_met")
    assert (met.tp, met.fn) == (1, 1)
    assert met.dice == pytest.approx(0.5) and met.hd95 == pytest.approx(187.0)


def test_tiny_lesion_under_threshold_is_left_out():
    et = _et("tiny_under_threshold")
    # 27 voxels <= 50 mm^3: neither an entry nor a miss.
    assert (et.tp, et.fn, et.fp, et.excluded) == (1, 0, 0, 1)
    assert et.dice == 1.0 and et.hd95 == 0.0


def test_both_empty_scores_one_and_zero():
    et = _et("both_empty")
    assert (et.dice, et.hd95, et.tp, et.fn, et.fp, et.excluded) == (1.0, 0.0, 0, 0, 0, 0)


def test_anisotropic_spacing():
    et = _et("anisotropic")
    # The 3x3x3 cube is 81 mm^3 at 1x1x3 mm: kept, and missed. The other is predicted one 3 mm
    # slice too long: Dice 2*64/(64+80); every surfel of the extra slice's top is 3 mm from the
    # reference surface (over 5 % of the predicted surface), none farther: HD95 3 mm.
    assert (et.tp, et.fn, et.excluded) == (1, 1, 0)
    assert et.lesions[0][1] == pytest.approx(128 / 144)
    assert et.lesions[0][2] == pytest.approx(3.0)
    assert et.dice == pytest.approx((128 / 144) / 2)
    assert et.hd95 == pytest.approx((3.0 + 374.0) / 2)
    assert et.lesions[1][0] == pytest.approx(81.0)


def test_2024_joins_through_the_lowest_touching_lesion():
    pred, ref, spacing = hand_built_2024_cases()["join_lowest_label"]
    rules = RULES["brats2024"]
    results = lesionwise_regions(pred, ref, rules, region_values(rules, POST), spacing)
    # ET: e1 joins NETC n1's group, e2 n2's: two lesions, e1 found exactly; the penalty is 337.
    assert (results["ET"].tp, results["ET"].fn) == (1, 1)
    assert results["ET"].dice == pytest.approx(0.5) and results["ET"].hd95 == pytest.approx(168.5)
    # NETC: n1 and n2 both touch e1: one lesion, missed.
    assert (results["NETC"].tp, results["NETC"].fn) == (0, 1)
    assert results["NETC"].hd95 == 337.0
    # TC: one connected lesion of 576 voxels, 256 of them predicted.
    assert results["TC"].dice == pytest.approx(512 / 832)
    assert results["SNFH"].dice == results["RC"].dice == 1.0


def test_2024_deletes_small_predicted_groups():
    ref = np.zeros((20, 20, 20), np.uint8)
    pred = ref.copy()
    pred[2:4, 2:4, 2:4] = 2  # 8 voxels of SNFH, no reference: deleted (<= 20)
    results = lesionwise_regions(pred, ref, RULES["brats2024"],
                                 region_values(RULES["brats2024"], POST))
    assert results["SNFH"].fp == 0 and results["SNFH"].dice == 1.0
    pred[2:5, 2:5, 2:5] = 2  # 27 voxels: a false positive
    results = lesionwise_regions(pred, ref, RULES["brats2024"],
                                 region_values(RULES["brats2024"], POST))
    assert results["SNFH"].fp == 1 and results["SNFH"].hd95 == 337.0


def test_flat_metrics_and_names():
    pred, ref, spacing = CASES["two_lesions_one_missed"]
    metrics = lesionwise_metrics(pred, ref, RULES["brats2023"], BRATS2023, spacing)
    assert tuple(metrics) == metric_keys(RULES["brats2023"])
    assert metrics["LesionDice_ET"] == pytest.approx(0.5)
    assert metrics["LesionHD95_ET"] == pytest.approx(187.0)
    assert (metrics["LesionTP_ET"], metrics["LesionFN_ET"], metrics["LesionFP_ET"],
            metrics["LesionExcluded_ET"]) == (1.0, 1.0, 0.0, 0.0)
    # The tissues decide the values: BraTS 2019 labels score ET = 4 by the same rules.
    old = lesionwise_metrics(np.where(pred == 3, 4, pred), np.where(ref == 3, 4, ref),
                             RULES["brats2023"], BRATS2019, spacing)
    assert old == metrics


def test_missing_tissue_is_a_clear_error():
    with pytest.raises(ValueError, match=r"brats2024: label convention brats2023 has no label "
                                         r"for RC \(region RC\)"):
        region_values(RULES["brats2024"], BRATS2023)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must be 3D volumes of one shape"):
        lesionwise_regions(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), RULES["brats2023"],
                           region_values(RULES["brats2023"], BRATS2023))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # its scipy.ndimage.filters imports
def test_robust_hausdorff_equals_deepmind_code():
    surface_distance = pytest.importorskip("surface_distance")
    rng = np.random.default_rng(3)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(6, 20, 3))
        gt = ndimage.binary_dilation(rng.random(shape) < 0.03, iterations=1)
        pred = ndimage.binary_dilation(rng.random(shape) < 0.03, iterations=1)
        if not gt.any() or not pred.any():
            continue
        spacing = tuple(float(s) for s in rng.choice([0.7, 1.0, 2.5], 3))
        expected = surface_distance.compute_robust_hausdorff(
            surface_distance.compute_surface_distances(gt, pred, spacing), 95)
        assert robust_hausdorff(gt, pred, spacing) == expected
    assert math.isinf(robust_hausdorff(np.ones((3, 3, 3)), np.zeros((3, 3, 3))))
