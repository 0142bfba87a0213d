"""Figures of held-out cases: keeps one axial slice per case, plots best, median and worst."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.convention import MODALITIES
from unet3d.tracking.figures import plot_case_slices, select_cases_for_figures, tumour_slice_index

FLAIR_CHANNEL = MODALITIES.index("flair")


class CaseFigureCollector:
    """Collects the most tumour-bearing axial slice of each evaluated case (a few KB each).

    ``add`` is the per-case callback of :func:`unet3d.evaluation.evaluate.evaluate_cases`;
    ``write`` plots the best, median and worst case by WT Dice and returns the PNG paths.
    """

    def __init__(self, directory: Path, key: str = "Dice_WT", convention: Any = None) -> None:
        self.directory = Path(directory)
        self.key = key
        self.convention = convention
        self.slices: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def add(self, case: Any, reference: np.ndarray, prediction: np.ndarray,
            metrics: dict[str, float]) -> None:
        """Keep the FLAIR, reference and prediction slice with the most reference tumour."""
        index = tumour_slice_index(reference, prediction)
        flair = np.asarray(case.image)[..., index : index + 1, FLAIR_CHANNEL]
        self.slices[case.case_id] = (
            flair.copy(), reference[..., index : index + 1].copy(),
            prediction[..., index : index + 1].copy(),
        )

    def write(self, per_case: list[dict[str, Any]]) -> list[Path]:
        """Plot the best, median and worst case; return the written PNG paths."""
        written = []
        chosen = select_cases_for_figures(per_case, key=self.key)
        scores = {row["case_id"]: row.get(self.key) for row in per_case}
        for rank, case_id in chosen.items():
            if case_id not in self.slices:
                continue
            flair, reference, prediction = self.slices[case_id]
            title = f"{rank}: {case_id} ({self.key} {scores.get(case_id, float('nan')):.3f})"
            path = self.directory / f"case_{rank}_{case_id}.png"
            written.append(plot_case_slices(flair, reference, prediction, title, path,
                                            convention=self.convention))
        return written
