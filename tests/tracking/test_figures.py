"""PNG figures: slices with overlays, training curves, case selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unet3d.tracking.figures import (
    plot_case_slices,
    plot_training_curves,
    select_cases_for_figures,
    tumour_slice_index,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert not list(path.parent.glob("*.tmp-*"))


def volumes(shape=(24, 20, 12)):
    rng = np.random.default_rng(0)
    flair = rng.random(shape, dtype=np.float32)
    reference = np.zeros(shape, np.uint8)
    reference[8:16, 6:14, 7] = 2
    reference[10:14, 8:12, 7] = 1
    reference[11:13, 9:11, 7] = 4
    reference[9:12, 9:12, 3] = 2
    prediction = np.zeros(shape, np.uint8)
    prediction[9:15, 7:13, 6:8] = 2
    prediction[11:13, 9:11, 7] = 3  # training class 3 is drawn as label 4
    return flair, reference, prediction


def test_slice_with_most_tumour() -> None:
    flair, reference, prediction = volumes()
    assert tumour_slice_index(reference, prediction) == 7
    empty = np.zeros_like(reference)
    assert tumour_slice_index(empty, prediction) == 6
    assert tumour_slice_index(empty, empty) == reference.shape[2] // 2


def test_plot_case_slices_writes_png(tmp_path: Path) -> None:
    path = plot_case_slices(*volumes(), "BraTS_001 (best, Dice_WT 0.91)", tmp_path / "f" / "a.png")
    assert_png(path)


def test_plot_case_slices_rejects_bad_shapes(tmp_path: Path) -> None:
    flair, reference, _ = volumes()
    with pytest.raises(ValueError, match="same|one shape"):
        plot_case_slices(flair, reference, reference[:, :, :5], "x", tmp_path / "x.png")


def test_plot_training_curves(tmp_path: Path) -> None:
    history = {
        "train/loss": [(step, 1.0 / (step + 1)) for step in range(0, 100, 10)],
        "train/learning_rate": [(0, 1e-3), (50, 5e-4), (99, 0.0)],
        "eval/Dice_WT": [(50, 0.4), (99, float("nan"))],
        "empty": [],
    }
    assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    assert_png(plot_training_curves({}, tmp_path / "none.png"))


def test_select_cases_for_figures() -> None:
    cases = [
        {"case_id": "a", "Dice_WT": 0.5},
        {"case_id": "b", "Dice_WT": 0.9},
        {"case_id": "c", "Dice_WT": float("nan")},
        {"case_id": "d", "Dice_WT": 0.1},
        {"case_id": "e", "Dice_WT": 0.7},
        {"case_id": "f"},
    ]
    assert select_cases_for_figures(cases) == {"best": "b", "median": "a", "worst": "d"}
    assert select_cases_for_figures(cases[:1]) == {"best": "a", "median": "a", "worst": "a"}
    assert select_cases_for_figures([{"case_id": "x"}]) == {}
