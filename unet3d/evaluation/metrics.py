"""BraTS segmentation metrics: Dice and 95th-percentile Hausdorff distance (NumPy/SciPy only).

Conventions:

- ``dice``: ``2 |A n B| / (|A| + |B|)``; both masks empty scores 1.0 (BraTS), not 0.
- ``hausdorff95``: 95th-percentile Hausdorff distance in mm as the official BraTS evaluation
  (``brats-evaluation``, built on panoptica) computes it: surface = mask XOR its binary erosion
  by the 6-connected (``generate_binary_structure(ndim, 1)``) element, voxels outside the volume
  counting as background; the directed distances pred surface -> ref surface and ref surface
  -> pred surface (``scipy.ndimage.distance_transform_edt(sampling=spacing)``) are pooled into
  one array and its 95th percentile (``np.percentile``, linear interpolation) is the HD95.
  This is not ``max(p95(pred -> ref), p95(ref -> pred))`` (MONAI's convention), which is
  usually larger. Both empty scores 0.0; exactly one empty scores the BraTS penalty
  ``373.1287`` mm (the diagonal of a 240x240x155 1 mm volume) rather than nan, so that case
  means stay finite.
- Regions come from the data set's label convention (``unet3d.data.layouts.convention``): BraTS
  2018-2021 WT = {1, 2, 4}, TC = {1, 4}, ET = {4}; BraTS 2023+ ET = {3}, TC = {1, 3},
  WT = {1, 2, 3} plus NETC, SNFH (and RC where the set has it); MSD Task01 WT = {1, 2, 3},
  TC = {2, 3}, ET = {3}; an nnU-Net raw folder's from its ``dataset.json``. Metric names are
  ``Dice_<region>`` and ``HD95_<region>``. For the BraTS 2018-2021 labels the seed's per-label
  names are kept too: ``TumorCore`` is label 1 alone (not the TC region),
  ``PeritumoralEdema`` label 2, ``EnhancingTumor`` label 4, ``WholeTumor`` the union {1, 2, 4}.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

#: HD95 (mm) scored when exactly one of prediction and reference is empty (BraTS penalty).
HD95_EMPTY_PENALTY = 373.1287
#: BraTS 2018-2021 evaluation regions as sets of label values (``BRATS2019.regions``).
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
#: The seed's per-label Dice names (BraTS 2018-2021 label values; only for that convention).
SEED_LABELS: dict[str, tuple[int, ...]] = {
    "TumorCore": (1,),
    "PeritumoralEdema": (2,),
    "EnhancingTumor": (4,),
}
#: Keys of ``case_metrics`` for the BraTS 2018-2021 convention, in order.
METRIC_KEYS: tuple[str, ...] = (
    "TumorCore",
    "PeritumoralEdema",
    "EnhancingTumor",
    "MeanDice",
    "WholeTumor",
    "Dice_WT",
    "Dice_TC",
    "Dice_ET",
    "HD95_WT",
    "HD95_TC",
    "HD95_ET",
)


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def _check_same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice coefficient of two binary masks; 1.0 when both are empty (BraTS convention)."""
    pred = _as_bool(pred_mask)
    ref = _as_bool(ref_mask)
    _check_same_shape(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def _normalise_spacing(spacing: Sequence[float] | float | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        values = (float(spacing),) * ndim  # type: ignore[arg-type]
    else:
        values = tuple(float(value) for value in spacing)  # type: ignore[union-attr]
    if len(values) != ndim or any(not value > 0 for value in values):
        raise ValueError(f"spacing must give {ndim} positive values, got {spacing!r}")
    return values


def hausdorff95(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    spacing: Sequence[float] | float | None = (1.0, 1.0, 1.0),
    empty_penalty: float = HD95_EMPTY_PENALTY,
) -> float:
    """95th-percentile Hausdorff distance (HD95) between two binary masks, in mm.

    Definition (the official BraTS evaluation, ``brats-evaluation`` on panoptica:
    ``panoptica/metrics/hausdorff_distance.py::_compute_hausdorff_distance95`` with the surface
    distances of ``panoptica/metrics/assd.py::__surface_distances``; MedPy's ``binary.hd95``
    is the same formula):

    1. surface ``S(M) = M XOR binary_erosion(M, generate_binary_structure(ndim, 1))``, i.e. the
       mask voxels with a face neighbour outside the mask; voxels beyond the volume border
       count as outside, so mask voxels on the border are surface voxels;
    2. ``d_pred`` = for every voxel of ``S(pred)`` the Euclidean distance (mm, via
       ``scipy.ndimage.distance_transform_edt(~S(ref), sampling=spacing)``) to the nearest voxel
       of ``S(ref)``; ``d_ref`` likewise from ``S(ref)`` to ``S(pred)``;
    3. ``HD95 = np.percentile(concatenate(d_pred, d_ref), 95)`` (NumPy's default linear
       interpolation) over the pooled distances -- not the larger of the two directed 95th
       percentiles (MONAI's ``compute_hausdorff_distance``), which is usually larger, by
       several mm on poor predictions.

    The value is symmetric in ``pred_mask`` and ``ref_mask``. Distances are in mm through
    ``spacing``; panoptica's ``__surface_distances`` runs its distance transform with
    ``sampling=None`` (voxel units), which gives the same numbers on BraTS' 1 mm isotropic
    volumes.

    Args:
        pred_mask: binary prediction mask, any shape (a BraTS case is (240, 240, 155)) and any
            dtype; non-zero voxels are foreground.
        ref_mask: binary reference mask of the same shape as ``pred_mask``.
        spacing: voxel size per axis in mm, one value per axis of the masks (a scalar applies
            to every axis; None = 1 mm).
        empty_penalty: value (mm) returned when exactly one mask is empty (BraTS: 373.1287 mm;
            pass ``float("nan")`` to leave such cases out of nan-aware means).

    Returns:
        HD95 in mm as a Python float: 0.0 when both masks are empty, ``empty_penalty`` when
        exactly one is.

    Raises:
        ValueError: if the masks differ in shape, or ``spacing`` does not give one positive
            value per axis.
    """
    pred = _as_bool(pred_mask)
    ref = _as_bool(ref_mask)
    _check_same_shape(pred, ref)
    sampling = _normalise_spacing(spacing, pred.ndim)
    pred_any = bool(pred.any())
    ref_any = bool(ref.any())
    if not pred_any and not ref_any:
        return 0.0
    if not pred_any or not ref_any:
        return float(empty_penalty)
    # Surfaces are taken on the full volume, so the volume border counts as background.
    pred_surface = _surface(pred)
    ref_surface = _surface(ref)
    # Every surface voxel lies in the bounding box of the union: the distance transforms
    # restricted to it are exact and much cheaper than over a whole 240x240x155 volume.
    box = ndimage.find_objects((pred_surface | ref_surface).astype(np.uint8))[0]
    pred_surface = pred_surface[box]
    ref_surface = ref_surface[box]
    distance_to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)
    distance_to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    pooled = np.concatenate((distance_to_ref[pred_surface], distance_to_pred[ref_surface]))
    return float(np.percentile(pooled, 95))


def _region_mask(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    return np.isin(labels, tuple(values))


def _convention(convention: Any) -> Any:
    if convention is None:
        from unet3d.data.layouts.convention import BRATS2019

        return BRATS2019
    return convention


def _seed_labels(convention: Any) -> dict[str, tuple[int, ...]]:
    """The seed's per-label names where the convention is BraTS 2018-2021's (labels 0, 1, 2, 4)."""
    return SEED_LABELS if tuple(convention.values) == (0, 1, 2, 4) else {}


def metric_keys(convention: Any = None) -> tuple[str, ...]:
    """The keys ``case_metrics`` returns for a label convention, in order.

    Args:
        convention: a ``unet3d.data.layouts.convention.LabelConvention``; None = BraTS 2018-2021.
    """
    convention = _convention(convention)
    seed = tuple(_seed_labels(convention))
    extra = (*seed, "MeanDice", "WholeTumor") if seed else ()
    regions = tuple(convention.regions)
    return (*extra, *(f"Dice_{r}" for r in regions), *(f"HD95_{r}" for r in regions))


def case_metrics(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    spacing: Sequence[float] | float | None = (1.0, 1.0, 1.0),
    labels: str = "brats",
    convention: Any = None,
) -> dict[str, float]:
    """Per-case Dice and HD95 of a predicted label volume against the reference.

    Args:
        pred_labels: predicted label volume ``(H, W, D)``, integer.
        ref_labels: reference label volume of the same shape.
        spacing: voxel size in mm per axis (for HD95).
        labels: ``"brats"`` when the volumes hold the data set's label values on disk
            (BraTS 2019: {0, 1, 2, 4}), or ``"training"`` for training classes
            (indices into ``convention.values``: class 3 is label 4 in BraTS 2019).
        convention: the data set's ``LabelConvention`` (its ``regions``); None = BraTS
            2018-2021.

    Returns:
        The keys of ``metric_keys(convention)``: ``Dice_<region>`` and ``HD95_<region>`` (mm)
        for every evaluation region of the convention and, for BraTS 2018-2021, first the
        seed's per-label Dice ``TumorCore`` (label 1), ``PeritumoralEdema`` (2),
        ``EnhancingTumor`` (4), their mean ``MeanDice`` and ``WholeTumor`` (Dice of {1, 2, 4}).

    Raises:
        ValueError: shapes differ, ``labels`` is neither ``brats`` nor ``training``, or
            training classes outside the convention's.
    """
    convention = _convention(convention)
    pred = np.asarray(pred_labels)
    ref = np.asarray(ref_labels)
    _check_same_shape(pred, ref)
    if labels == "training":
        pred = convention.to_labels(pred)
        ref = convention.to_labels(ref)
    elif labels != "brats":
        raise ValueError(f"labels must be 'brats' or 'training', got {labels!r}")

    result: dict[str, float] = {}
    seed = _seed_labels(convention)
    for name, values in seed.items():
        result[name] = dice(_region_mask(pred, values), _region_mask(ref, values))
    if seed:
        result["MeanDice"] = float(np.mean([result[name] for name in seed]))
        result["WholeTumor"] = dice(_region_mask(pred, (1, 2, 4)), _region_mask(ref, (1, 2, 4)))
    for region, values in convention.regions.items():
        pred_mask = _region_mask(pred, values)
        ref_mask = _region_mask(ref, values)
        result[f"Dice_{region}"] = dice(pred_mask, ref_mask)
        result[f"HD95_{region}"] = hausdorff95(pred_mask, ref_mask, spacing)
    return {key: float(result[key]) for key in metric_keys(convention)}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def summarize(cases: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """Mean of every numeric metric over cases, ignoring nan values (nan when all are nan).

    Non-numeric entries (e.g. a ``case_id`` column) are skipped. Keys follow the first case's
    order, then any key only later cases have; an empty list gives an empty dict.
    """
    keys: list[str] = []
    for case in cases:
        for key, value in case.items():
            if key not in keys and _is_number(value):
                keys.append(key)
    summary: dict[str, float] = {}
    for key in keys:
        values = np.array(
            [float(case[key]) for case in cases if _is_number(case.get(key))],  # type: ignore[arg-type]
            dtype=np.float64,
        )
        finite = values[~np.isnan(values)]
        summary[key] = float(finite.mean()) if finite.size else float("nan")
    return summary


def _format_value(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def format_table(summary: Mapping[str, float], convention: Any = None) -> str:
    """Render a summary (or one case's metrics) as a per-region table for the log.

    Rows: the convention's evaluation regions (Dice and HD95 in mm) with their label values,
    then, for BraTS 2018-2021, the seed's per-label Dice (TumorCore = label 1,
    PeritumoralEdema = 2, EnhancingTumor = 4) and MeanDice. Rows whose keys are missing are
    left out; regions found only in ``summary`` (``Dice_<name>``) are listed after the others.
    With lesion-wise metrics (``LesionDice_<region>``, ``LesionHD95_<region>``,
    ``unet3d.evaluation.lesionwise``) two more columns show them.

    Args:
        summary: metric name -> value.
        convention: the data set's ``LabelConvention``; None = BraTS 2018-2021.
    """
    convention = _convention(convention)
    rows: list[tuple[str, float | None, float | None, float | None, float | None]] = []
    regions: dict[str, tuple[int, ...] | None] = dict(convention.regions)
    for key in summary:
        for prefix in ("Dice_", "LesionDice_"):
            if (key.startswith(prefix) and key[len(prefix):] not in regions
                    and "/" not in key):
                regions[key[len(prefix):]] = None
    lesionwise = any(key.startswith("LesionDice_") for key in summary)
    for region, values in regions.items():
        keys = (f"Dice_{region}", f"HD95_{region}", f"LesionDice_{region}",
                f"LesionHD95_{region}")
        if any(key in summary for key in keys):
            name = region if values is None else (
                f"{region} {{{','.join(str(value) for value in values)}}}")
            rows.append((name, *(summary.get(key) for key in keys)))  # type: ignore[arg-type]
    for name, values in SEED_LABELS.items():
        if name in summary:
            rows.append((f"{name} (label {values[0]})", summary[name], None, None, None))
    if "MeanDice" in summary:
        rows.append(("MeanDice (labels 1,2,4)", summary["MeanDice"], None, None, None))
    header = ["region / label", "Dice", "HD95 mm"]
    if lesionwise:
        header += ["lesion Dice", "lesion HD95"]
    width = max([len(header[0])] + [len(row[0]) for row in rows])
    line = f"{header[0]:<{width}}  {header[1]:>8}  {header[2]:>8}"
    if lesionwise:
        line += f"  {header[3]:>11}  {header[4]:>11}"
    lines = [line, "-" * len(line)]
    for name, dice_value, hd_value, lesion_dice, lesion_hd in rows:
        text = (f"{name:<{width}}  {_format_value(dice_value, 4):>8}  "
                f"{_format_value(hd_value, 2):>8}")
        if lesionwise:
            text += (f"  {_format_value(lesion_dice, 4):>11}  "
                     f"{_format_value(lesion_hd, 2):>11}")
        lines.append(text)
    return "\n".join(lines)
