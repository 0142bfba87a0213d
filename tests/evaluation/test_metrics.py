"""Tests of the BraTS Dice / HD95 metrics against hand-computed tiny volumes."""

import math
import subprocess
import sys

import numpy as np
import pytest

from unet3d.evaluation.metrics import (
    HD95_EMPTY_PENALTY,
    METRIC_KEYS,
    REGIONS,
    case_metrics,
    dice,
    format_table,
    hausdorff95,
    summarize,
)


def mask(shape, *voxels):
    result = np.zeros(shape, dtype=bool)
    for voxel in voxels:
        result[voxel] = True
    return result


def test_module_does_not_import_tensorflow():
    # importing the module alone must not pull TensorFlow in (checked in a fresh interpreter)
    code = "import sys, unet3d.evaluation.metrics; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_dice_hand_computed():
    shape = (4, 4, 4)
    a = mask(shape, (0, 0, 0), (0, 0, 1), (0, 0, 2))
    b = mask(shape, (0, 0, 2), (3, 3, 3))
    assert dice(a, b) == pytest.approx(2 * 1 / (3 + 2))
    assert dice(a, a) == 1.0
    assert dice(np.zeros(shape), np.zeros(shape)) == 1.0
    assert dice(a, np.zeros(shape)) == 0.0
    with pytest.raises(ValueError):
        dice(a, np.zeros((4, 4, 3)))


def test_hausdorff95_of_single_voxels_honours_spacing():
    shape = (5, 5, 5)
    a = mask(shape, (0, 0, 0))
    b = mask(shape, (0, 0, 4))
    assert hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(4.0)
    assert hausdorff95(a, b, (1.0, 1.0, 2.5)) == pytest.approx(10.0)
    c = mask(shape, (3, 4, 0))
    assert hausdorff95(a, c, (2.0, 1.0, 7.0)) == pytest.approx(math.hypot(6.0, 4.0))


def test_hausdorff95_of_shifted_cubes():
    # 3^3 cubes shifted by one voxel along axis 0: every surface voxel of one lies on, or one
    # voxel from, the other's surface (10 of 26 at distance 1), so the 95th percentile is 1.
    a = np.zeros((8, 8, 8), dtype=bool)
    a[2:5, 2:5, 2:5] = True
    b = np.roll(a, 1, axis=0)
    assert hausdorff95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert hausdorff95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff95(a, b, (1.0, 3.0, 3.0)) == pytest.approx(1.0)


def test_hausdorff95_ignores_a_single_outlier_but_not_a_large_one():
    reference = np.zeros((20, 12, 12), dtype=bool)
    reference[2:7, 2:7, 2:7] = True  # 98 surface voxels
    prediction = reference.copy()
    prediction[16, 4, 4] = True  # one stray voxel 10 voxels away: below the 95th percentile
    assert hausdorff95(prediction, reference) == pytest.approx(0.0)
    prediction[12:18, 0:12, 0:12] = True  # a big false-positive slab dominates
    assert hausdorff95(prediction, reference) > 5.0


def _pooled_and_max_of_directed(pred_to_ref, ref_to_pred):
    # the official (pooled) HD95 and the old max-of-directed value, from hand-written distances
    pooled = float(np.percentile(pred_to_ref + ref_to_pred, 95))
    directed = max(float(np.percentile(pred_to_ref, 95)), float(np.percentile(ref_to_pred, 95)))
    return pooled, directed


def test_hausdorff95_pools_both_directions_in_a_single_slice():
    # A one-voxel-thick volume: erosion along axis 0 removes every voxel, so each mask is its
    # own surface and the distances can be read off the grid (1 mm spacing).
    shape = (1, 5, 12)
    reference = np.zeros(shape, dtype=bool)
    reference[0, 0, 0:10] = True  # row 0, columns 0..9
    prediction = np.zeros(shape, dtype=bool)
    prediction[0, 0, 0:8] = True  # row 0, columns 0..7 ...
    prediction[0, 2, 0] = True  # ... plus (row 2, col 0): 2 mm from reference (0, 0)
    prediction[0, 3, 0] = True  # ... plus (row 3, col 0): 3 mm from reference (0, 0)
    pred_to_ref = [0.0] * 8 + [2.0, 3.0]
    ref_to_pred = [0.0] * 8 + [1.0, 2.0]  # columns 8 and 9 are 1 and 2 mm from column 7
    pooled, directed = _pooled_and_max_of_directed(pred_to_ref, ref_to_pred)
    # pooled: 20 sorted values (16 zeros, 1, 2, 2, 3); rank 0.95 * 19 = 18.05 -> 2 + 0.05 * (3 - 2)
    assert pooled == pytest.approx(2.05)
    # directed: 10 values each; rank 0.95 * 9 = 8.55 -> pred: 2 + 0.55 * 1, ref: 1 + 0.55 * 1
    assert directed == pytest.approx(2.55)
    assert hausdorff95(prediction, reference, (1.0, 1.0, 1.0)) == pytest.approx(pooled)
    assert hausdorff95(reference, prediction, (1.0, 1.0, 1.0)) == pytest.approx(pooled)


def test_hausdorff95_pools_both_directions_with_anisotropic_spacing():
    # A 3^3 cube (surface = 26 voxels, all but its centre) against the same cube plus four
    # isolated voxels, none touching the cube, so the cube's surface is unchanged in both.
    spacing = (2.0, 1.0, 0.5)  # mm along axes 0, 1, 2
    reference = np.zeros((9, 9, 12), dtype=bool)
    reference[2:5, 2:5, 2:5] = True
    prediction = reference.copy()
    prediction[3, 3, 8] = True  # 4 voxels past (3, 3, 4) along axis 2: 4 * 0.5 = 2.0 mm
    prediction[3, 3, 11] = True  # 7 voxels past (3, 3, 4) along axis 2: 7 * 0.5 = 3.5 mm
    prediction[3, 7, 3] = True  # 3 voxels past (3, 4, 3) along axis 1: 3 * 1.0 = 3.0 mm
    prediction[7, 3, 3] = True  # 3 voxels past (4, 3, 3) along axis 0: 3 * 2.0 = 6.0 mm
    pred_to_ref = [0.0] * 26 + [2.0, 3.0, 3.5, 6.0]
    ref_to_pred = [0.0] * 26
    pooled, directed = _pooled_and_max_of_directed(pred_to_ref, ref_to_pred)
    # pooled: 56 values (52 zeros, 2, 3, 3.5, 6); rank 0.95 * 55 = 52.25 -> 2 + 0.25 * (3 - 2)
    assert pooled == pytest.approx(2.25)
    # directed pred -> ref: 30 values; rank 0.95 * 29 = 27.55 -> 3 + 0.55 * (3.5 - 3)
    assert directed == pytest.approx(3.275)
    assert hausdorff95(prediction, reference, spacing) == pytest.approx(pooled)
    assert hausdorff95(reference, prediction, spacing) == pytest.approx(pooled)
    # isotropic 1 mm: distances 4, 7, 3, 3 -> sorted tail (3, 3, 4, 7); rank 52.25 -> 3.0
    assert hausdorff95(prediction, reference, 1.0) == pytest.approx(3.0)


def test_hausdorff95_rejects_bad_spacing():
    a = mask((3, 3, 3), (1, 1, 1))
    with pytest.raises(ValueError):
        hausdorff95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError):
        hausdorff95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        hausdorff95(a, mask((3, 3, 2), (1, 1, 1)))


def test_hausdorff95_empty_cases():
    shape = (4, 4, 4)
    empty = np.zeros(shape, dtype=bool)
    one = mask(shape, (1, 1, 1))
    assert hausdorff95(empty, empty) == 0.0
    assert hausdorff95(one, empty) == HD95_EMPTY_PENALTY
    assert hausdorff95(empty, one) == HD95_EMPTY_PENALTY
    assert math.isnan(hausdorff95(empty, one, empty_penalty=float("nan")))
    assert HD95_EMPTY_PENALTY == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=1e-3)


def test_case_metrics_hand_computed():
    reference = np.zeros((6, 6, 6), dtype=np.uint8)
    reference[0, 0, 0:4] = 1  # 4 voxels NCR
    reference[1, 0, 0:4] = 2  # 4 voxels edema
    reference[2, 0, 0:2] = 4  # 2 voxels ET
    prediction = reference.copy()
    prediction[0, 0, 3] = 4  # one NCR voxel predicted ET
    prediction[1, 0, 0:2] = 0  # two edema voxels missed
    result = case_metrics(prediction, reference, (1.0, 1.0, 1.0))
    assert tuple(result) == METRIC_KEYS
    assert result["TumorCore"] == pytest.approx(2 * 3 / (3 + 4))
    assert result["PeritumoralEdema"] == pytest.approx(2 * 2 / (2 + 4))
    assert result["EnhancingTumor"] == pytest.approx(2 * 2 / (3 + 2))
    assert result["MeanDice"] == pytest.approx((6 / 7 + 4 / 6 + 4 / 5) / 3)
    assert result["WholeTumor"] == pytest.approx(2 * 8 / (8 + 10))
    assert result["Dice_WT"] == result["WholeTumor"]
    assert result["Dice_TC"] == pytest.approx(1.0)  # {1,4} unchanged by the 1 -> 4 swap
    assert result["Dice_ET"] == result["EnhancingTumor"]
    assert result["HD95_TC"] == pytest.approx(0.0)
    assert result["HD95_ET"] > 0.0
    assert all(isinstance(value, float) for value in result.values())
    assert REGIONS == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}

    training = case_metrics(
        np.where(prediction == 4, 3, prediction),
        np.where(reference == 4, 3, reference),
        (1.0, 1.0, 1.0),
        labels="training",
    )
    assert training == result
    with pytest.raises(ValueError):
        case_metrics(prediction, reference, labels="nnunet")


def test_case_metrics_empty_region_follows_brats():
    reference = np.zeros((4, 4, 4), dtype=np.uint8)
    reference[0, 0, 0] = 2
    result = case_metrics(reference.copy(), reference, (1.0, 1.0, 1.0))
    assert result["EnhancingTumor"] == 1.0 and result["HD95_ET"] == 0.0
    prediction = reference.copy()
    prediction[3, 3, 3] = 4
    result = case_metrics(prediction, reference, (1.0, 1.0, 1.0))
    assert result["Dice_ET"] == 0.0 and result["HD95_ET"] == HD95_EMPTY_PENALTY


def test_summarize_is_nan_aware():
    cases = [
        {"Dice_WT": 0.5, "HD95_WT": float("nan")},
        {"Dice_WT": 1.0, "HD95_WT": 4.0},
        {"Dice_WT": 0.0, "HD95_WT": float("nan"), "extra": np.float32(2.0), "case_id": "c3"},
    ]
    summary = summarize(cases)
    assert summary["Dice_WT"] == pytest.approx(0.5)
    assert summary["HD95_WT"] == pytest.approx(4.0)
    assert summary["extra"] == 2.0
    assert list(summary) == ["Dice_WT", "HD95_WT", "extra"]
    assert math.isnan(summarize([{"a": float("nan")}])["a"])
    assert summarize([]) == {}


def test_format_table_lists_regions_and_labels():
    reference = np.zeros((4, 4, 4), dtype=np.uint8)
    reference[1:3, 1:3, 1:3] = 1
    reference[0, 0, 0] = 4
    summary = summarize([case_metrics(reference, reference, (1.0, 1.0, 1.0))])
    table = format_table(summary)
    lines = table.splitlines()
    assert "Dice" in lines[0] and "HD95" in lines[0]
    for name in ("WT {1,2,4}", "TC {1,4}", "ET {4}", "TumorCore (label 1)", "MeanDice"):
        assert any(line.startswith(name) for line in lines), name
    wt_line = next(line for line in lines if line.startswith("WT"))
    assert "1.0000" in wt_line and "0.00" in wt_line
    assert format_table({"Dice_WT": float("nan")}).splitlines()[-1].split()[-2:] == ["nan", "-"]


def test_case_metrics_follow_the_data_sets_regions():
    from unet3d.data.layouts.convention import BRATS2023, MSD_BRAIN
    from unet3d.evaluation.metrics import metric_keys

    reference = np.zeros((6, 6, 6), dtype=np.uint8)
    reference[0, 0, 0:4] = 1  # BraTS 2023: NETC
    reference[1, 0, 0:4] = 2  # SNFH
    reference[2, 0, 0:2] = 3  # ET
    prediction = reference.copy()
    prediction[0, 0, 3] = 3  # one NETC voxel predicted ET
    prediction[1, 0, 0:2] = 0  # two SNFH voxels missed
    result = case_metrics(prediction, reference, (1.0, 1.0, 1.0), convention=BRATS2023)
    assert tuple(result) == metric_keys(BRATS2023) == (
        "Dice_ET", "Dice_TC", "Dice_WT", "Dice_NETC", "Dice_SNFH",
        "HD95_ET", "HD95_TC", "HD95_WT", "HD95_NETC", "HD95_SNFH")
    assert result["Dice_ET"] == pytest.approx(2 * 2 / (3 + 2))
    assert result["Dice_TC"] == pytest.approx(1.0)
    assert result["Dice_WT"] == pytest.approx(2 * 8 / (8 + 10))
    assert result["Dice_NETC"] == pytest.approx(2 * 3 / (3 + 4))
    assert result["Dice_SNFH"] == pytest.approx(2 * 2 / (2 + 4))
    assert "TumorCore" not in result  # the seed's names belong to the 2019 labels
    # MSD: label 2 is the non-enhancing core, label 1 edema: TC = {2, 3}.
    msd = case_metrics(prediction, reference, (1.0, 1.0, 1.0), convention=MSD_BRAIN)
    assert msd["Dice_TC"] == pytest.approx(2 * 4 / (5 + 6))  # ref 4 + 2 voxels, pred 2 + 3
    # Training classes are indices into the convention's values.
    classes = case_metrics(prediction, reference, labels="training", convention=BRATS2023)
    assert classes == result
    table = format_table(summarize([result]), BRATS2023).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["ET", "TC", "WT", "NETC", "SNFH"]
    assert table[3].startswith("TC {1,3}")
