"""DeepMind's surfel-based robust Hausdorff distance, as the BraTS 2023 and 2024 lesion-wise
scripts compute it (NumPy/SciPy).

Definition (Nikolov et al., "Deep learning to achieve clinically applicable segmentation of
head and neck anatomy for radiotherapy", 2018; code github.com/deepmind/surface-distance,
``surface_distance/metrics.py`` ``compute_surface_distances`` and ``compute_robust_hausdorff``,
bundled unchanged in rachitsaluja/BraTS-2023-Metrics and BraTS-2024-Metrics):

1. Surface elements ("surfels") live on the corners of the voxel grid: every corner's
   2x2x2 neighbourhood code (the 8 voxels around it, weights 128 .. 1 as
   ``ENCODE_NEIGHBOURHOOD_3D_KERNEL``) that is neither 0 nor 255 is a surface corner, once
   per mask.
2. Each surface corner of one mask gets the Euclidean distance in mm
   (``scipy.ndimage.distance_transform_edt(sampling=spacing)``) to the nearest surface corner
   of the other mask, and an area in mm^2: the marching-cubes triangles of its code (the
   256-entry normal table of DeepMind's ``lookup_tables.py``) scaled by the spacing.
3. Per direction, the distances are sorted (by distance, then area: ``sorted(zip(...))``) and
   the ``percent`` percentile is the first distance whose cumulative area share reaches
   ``percent / 100`` (``np.searchsorted`` on ``cumsum(area) / sum(area)``). The robust Hausdorff
   distance is the larger of the two directed percentiles; a direction without surface (an
   empty mask) gives ``inf``.

This is not the pooled percentile of ``unet3d.evaluation.metrics.hausdorff95`` (the voxel-wise
HD95 of ``brats-evaluation``/panoptica): on the same masks the two differ.

The area table comes from the ``surface-distance`` package on PyPI (DeepMind's code, Apache
2.0; ``lookup_tables.create_table_neighbour_code_to_surface_area``), so the numbers are the
scripts' own; the rest is computed here on the masks' bounding box.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Weights of the 2x2x2 neighbourhood code (DeepMind's ``ENCODE_NEIGHBOURHOOD_3D_KERNEL``).
_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


@functools.lru_cache(maxsize=32)
def surfel_areas(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm^2 of the surface elements of each of the 256 neighbourhood codes.

    Args:
        spacing: voxel sides in mm, in array axis order.

    Returns:
        float64 ``(256,)``; read-only, cached per spacing.
    """
    from surface_distance import lookup_tables

    table = np.asarray(
        lookup_tables.create_table_neighbour_code_to_surface_area(tuple(spacing)), np.float64)
    table.setflags(write=False)
    return table


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """The corner codes of a cropped mask: one zero layer appended on every axis end, then
    DeepMind's ``correlate`` with the 2x2x2 kernel (the start side reads the constant 0)."""
    padded = np.zeros(tuple(side + 1 for side in mask.shape), np.uint8)
    padded[:-1, :-1, :-1] = mask
    return ndimage.correlate(padded, _KERNEL, mode="constant", cval=0)


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if distances.size == 0:
        return float("inf")
    # sorted(zip(distances, areas)) of the reference: by distance, ties by area.
    order = np.lexsort((areas, distances))
    distances, areas = distances[order], areas[order]
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[min(index, distances.size - 1)])


def robust_hausdorff(mask_gt: np.ndarray, mask_pred: np.ndarray,
                     spacing: Sequence[float] = (1.0, 1.0, 1.0), percent: float = 95.0) -> float:
    """DeepMind's robust Hausdorff distance of two 3D masks, in mm (see the module doc).

    Args:
        mask_gt: reference mask ``(X, Y, Z)``, any dtype (non-zero = inside).
        mask_pred: predicted mask, same shape.
        spacing: voxel sides in mm, in array axis order.
        percent: the percentile, 0..100 (BraTS: 95).

    Returns:
        The distance in mm; ``inf`` when either mask is empty (the scripts then score their
        penalty, 374 or 337 mm).

    Raises:
        ValueError: the masks differ in shape or are not 3D.
    """
    gt = np.asarray(mask_gt).astype(bool, copy=False)
    pred = np.asarray(mask_pred).astype(bool, copy=False)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"masks must be 3D and of one shape, got {gt.shape} and {pred.shape}")
    if not gt.any() or not pred.any():
        return float("inf")
    union = (gt | pred).astype(np.uint8)
    box = ndimage.find_objects(union)[0]
    codes_gt = _neighbour_codes(gt[box])
    codes_pred = _neighbour_codes(pred[box])
    borders_gt = (codes_gt != 0) & (codes_gt != 255)
    borders_pred = (codes_pred != 0) & (codes_pred != 255)
    sampling = tuple(float(s) for s in spacing)
    distance_to_gt = ndimage.distance_transform_edt(~borders_gt, sampling=sampling)
    distance_to_pred = ndimage.distance_transform_edt(~borders_pred, sampling=sampling)
    areas = surfel_areas(sampling)
    gt_to_pred = _directed_percentile(distance_to_pred[borders_gt], areas[codes_gt[borders_gt]],
                                      percent)
    pred_to_gt = _directed_percentile(distance_to_gt[borders_pred],
                                      areas[codes_pred[borders_pred]], percent)
    return max(gt_to_pred, pred_to_gt)
