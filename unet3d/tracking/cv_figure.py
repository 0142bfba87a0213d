"""The figure of a cross-validation summary: voxel-wise vs lesion-wise scores per region.

Drawn on the parent run (``cv_summary/cv_scores.png``) when the folds report lesion-wise
metrics (``LesionDice_<region>``, ``LesionHD95_<region>``: ``unet3d.evaluation.lesionwise``):
per region the mean over the folds of the voxel-wise Dice and the lesion-wise Dice (error bars:
the folds' sample std), and the same for HD95 in mm. Matplotlib only (Agg canvas).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: File name of the figure in the sweep folder.
CV_FIGURE = "cv_scores.png"


def _regions(metrics: dict[str, Any]) -> list[str]:
    return [name[len("LesionDice_"):] for name in metrics if name.startswith("LesionDice_")]


def has_lesionwise(summary: Any) -> bool:
    """Whether a ``GroupSummary`` holds lesion-wise metrics."""
    return bool(_regions(summary.metrics))


def plot_cv_scores(summary: Any, path: str | Path) -> Path:
    """Bar charts of voxel-wise vs lesion-wise Dice and HD95 per region (mean +- std).

    Args:
        summary: a ``unet3d.tracking.summary.GroupSummary`` with lesion-wise metrics.
        path: the PNG to write (atomically).

    Returns:
        ``path``.
    """
    import numpy as np
    from matplotlib.figure import Figure

    from unet3d.tracking.figures import _save_atomic

    regions = _regions(summary.metrics)
    figure = Figure(figsize=(4 + 1.2 * len(regions), 3.6))
    for column, (title, voxel, lesion) in enumerate((("Dice", "Dice_", "LesionDice_"),
                                                       ("HD95 (mm)", "HD95_", "LesionHD95_"))):
        axes = figure.add_subplot(1, 2, column + 1)
        positions = np.arange(len(regions))
        for offset, (prefix, label) in enumerate(((voxel, "voxel-wise"),
                                                  (lesion, "lesion-wise"))):
            stats = [summary.metrics.get(prefix + region) for region in regions]
            means = [s.mean if s is not None else math.nan for s in stats]
            stds = [s.std if s is not None and math.isfinite(s.std) else 0.0 for s in stats]
            axes.bar(positions + (offset - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3,
                     label=label)
        axes.set_xticks(positions, regions)
        axes.set_title(title)
        if column == 0:
            axes.set_ylim(0, 1)
            axes.legend(fontsize="small")
    figure.suptitle(f"cross-validation ({len(summary.finished)} folds): mean +- std", fontsize=10)
    figure.tight_layout()
    return _save_atomic(figure, path, dpi=110)
