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
