"""PNG figures for MLflow: axial slices with label overlays, training curves, case selection,
and ``CaseFigureCollector`` (the best, median and worst held-out case of evaluate).

Matplotlib is used through its object API on the Agg canvas (no pyplot, no display, safe in
worker threads). Figures are written atomically.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.layouts.convention import MODALITIES
from unet3d.runs.files import write_atomic_with

logger = logging.getLogger(__name__)

#: Channel of FLAIR in a case's image (the slice the case figures show).
FLAIR_CHANNEL = MODALITIES.index("flair")

#: Overlay colours (RGB) of the tissues (``unet3d.data.layouts.convention.tissue_of``), in every
#: data set's labels alike: NETC (NCR/NET) red, SNFH (ED) green, ET yellow, RC blue.
TISSUE_COLOURS: dict[str, tuple[float, float, float]] = {
    "NETC": (0.90, 0.10, 0.10),
    "SNFH": (0.15, 0.75, 0.20),
    "ET": (1.00, 0.85, 0.10),
    "RC": (0.20, 0.45, 0.95),
}
#: Colours of labels whose tissue is not one of those (cycled).
OTHER_COLOURS = ((0.85, 0.35, 0.85), (0.10, 0.80, 0.80), (0.95, 0.55, 0.10))
OVERLAY_ALPHA = 0.45


def label_colours(convention: Any = None) -> dict[int, tuple[tuple[float, float, float], str]]:
    """Label value -> (RGB colour, legend text) of a convention's non-background labels.

    Args:
        convention: a ``LabelConvention``; None = BraTS 2018-2021 (1 NCR, 2 ED, 4 ET).
    """
    if convention is None:
        from unet3d.data.layouts.convention import BRATS2019 as convention
    colours: dict[int, tuple[tuple[float, float, float], str]] = {}
    others = 0
    for value, tissue in zip(convention.values, convention.tissues, strict=True):
        if tissue == "background":
            continue
        colour = TISSUE_COLOURS.get(tissue)
        if colour is None:
            colour = OTHER_COLOURS[others % len(OTHER_COLOURS)]
            others += 1
        colours[value] = (colour, f"{value} {convention.labels[value]}")
    return colours


def tumour_slice_index(reference: np.ndarray, prediction: np.ndarray | None = None) -> int:
    """Axial index (last axis) with the most tumour voxels in `reference`.

    Falls back to the prediction, then to the middle slice, when the reference is empty.
    """
    for volume in (reference, prediction):
        if volume is None:
            continue
        counts = np.count_nonzero(np.asarray(volume) > 0, axis=(0, 1))
        if counts.size and counts.max() > 0:
            return int(np.argmax(counts))
    return int(np.asarray(reference).shape[-1] // 2)


def _overlay(labels_slice: np.ndarray,
             colours: Mapping[int, tuple[tuple[float, float, float], str]]) -> np.ndarray:
    """RGBA overlay of a 2-D label slice (``colours``: ``label_colours``)."""
    labels_slice = np.asarray(labels_slice)
    rgba = np.zeros(labels_slice.shape + (4,), dtype=np.float32)
    for label, (colour, _) in colours.items():
        mask = labels_slice == label
        rgba[mask, :3] = colour
        rgba[mask, 3] = OVERLAY_ALPHA
    return rgba


def _save_atomic(figure: Any, path: str | os.PathLike, dpi: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    return write_atomic_with(
        path, lambda temporary: figure.savefig(temporary, format="png", dpi=dpi,
                                               bbox_inches="tight")
    )


def plot_case_slices(
    flair: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    title: str,
    path: str | os.PathLike,
    slice_index: int | None = None,
    dpi: int = 100,
    convention: Any = None,
) -> Path:
    """Save a PNG of one axial slice: FLAIR with the reference and the predicted labels.

    `flair`, `reference` and `prediction` are (H, W, D) volumes; labels are the label values of
    `convention` (a ``LabelConvention``; None = BraTS 2018-2021 {0, 1, 2, 4}), coloured by
    tissue. The slice is the one with the most reference tumour unless `slice_index` is given.
    Returns the path written.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    flair = np.asarray(flair, dtype=np.float32)
    reference = np.asarray(reference)
    prediction = np.asarray(prediction)
    if flair.ndim != 3 or reference.shape != flair.shape or prediction.shape != flair.shape:
        raise ValueError(
            "plot_case_slices: flair, reference and prediction must be (H, W, D) volumes of one "
            f"shape, got {flair.shape}, {reference.shape}, {prediction.shape}"
        )
    index = tumour_slice_index(reference, prediction) if slice_index is None else int(slice_index)
    if not 0 <= index < flair.shape[2]:
        raise ValueError(f"slice_index: must be in [0, {flair.shape[2]}), got {index}")

    # Display convention: first axis left-right, second anterior-posterior -> rotate.
    image = np.rot90(flair[:, :, index])
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0

    colours = label_colours(convention)
    figure = Figure(figsize=(9, 4.8))
    axes = figure.subplots(1, 2)
    for axis, volume, name in (
        (axes[0], reference, "reference"),
        (axes[1], prediction, "prediction"),
    ):
        axis.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axis.imshow(_overlay(np.rot90(volume[:, :, index]), colours), interpolation="nearest")
        axis.set_title(f"FLAIR + {name}")
        axis.axis("off")
    handles = [
        Patch(facecolor=(*colour, 0.8), label=text) for colour, text in colours.values()
    ]
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=8)
    figure.suptitle(f"{title} (axial slice {index})")
    return _save_atomic(figure, path, dpi)


def plot_training_curves(
    history: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike,
    columns: int = 3,
    dpi: int = 100,
) -> Path:
    """Save a PNG with one panel per metric of `history` ({name: [(step, value), ...]}).

    Non-finite values are dropped; a metric named like a loss gets a log y-axis when all its
    values are positive.
    """
    from matplotlib.figure import Figure

    names = [name for name, points in history.items() if points]
    if not names:
        names = ["(no data)"]
    columns = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, name in zip(axes, names, strict=False):
        points = [
            (int(step), float(value))
            for step, value in history.get(name, [])
            if value is not None and math.isfinite(float(value))
        ]
        if points:
            steps, values = zip(*sorted(points), strict=True)
            axis.plot(steps, values, marker="." if len(points) < 30 else None, linewidth=1.2)
            if "loss" in name.lower() and min(values) > 0:
                axis.set_yscale("log")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(True, alpha=0.3)
        axis.tick_params(labelsize=7)
    for axis in axes[len(names) :]:
        axis.axis("off")
    figure.tight_layout()
    return _save_atomic(figure, path, dpi)


def select_cases_for_figures(
    case_metrics: Sequence[Mapping[str, Any]],
    key: str = "Dice_WT",
    id_key: str = "case_id",
) -> dict[str, str]:
    """Pick the best, median and worst case by `key` (higher is better).

    Cases whose value is missing or not finite are ignored; ties are broken by case id. The
    median is the lower middle case. Returns {"best": id, "median": id, "worst": id} (fewer
    distinct ids when there are fewer than three cases; {} when none qualifies).
    """
    scored = []
    for case in case_metrics:
        value = case.get(key)
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            scored.append((number, str(case[id_key])))
    if not scored:
        logger.warning("select_cases_for_figures: no case has a finite %s", key)
        return {}
    scored.sort()
    return {
        "best": scored[-1][1],
        "median": scored[(len(scored) - 1) // 2][1],
        "worst": scored[0][1],
    }


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
