"""Connected components, dilation groups and lesion matching for ``unet3d.evaluation.lesionwise``.

The building blocks of the BraTS 2023/2024 lesion-wise scores (their sources and quirks:
``lesionwise``'s module doc), each computed on the bounding boxes of components rather than on
the whole volume (NumPy/SciPy). Label numbers follow ``scipy.ndimage.label`` with the full
3x3x3 element: components numbered in C order of their first voxel, as ``cc3d`` numbers them
on the C-ordered arrays of the scripts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from unet3d.evaluation.surface_distance import robust_hausdorff

S18 = ndimage.generate_binary_structure(3, 2)
S26 = np.ones((3, 3, 3), dtype=bool)

#: Per-region metric name prefixes, in the order of ``metric_keys``.
METRIC_PREFIXES: tuple[str, ...] = ("LesionDice", "LesionHD95", "LesionTP", "LesionFN",
                                    "LesionFP", "LesionExcluded")


@dataclass
class RegionLesions:
    """One region's lesion-wise result for one case.

    Attributes:
        dice: lesion-wise Dice (mean over the entries).
        hd95: lesion-wise HD95 in mm (mean over the entries).
        tp: kept ground-truth lesions with at least one predicted component.
        fn: kept ground-truth lesions without.
        fp: predicted components that overlap no lesion's dilation.
        excluded: ground-truth lesions left out by the volume threshold.
        lesions: per kept lesion ``(volume_mm3, dice, hd95)``.
    """

    dice: float
    hd95: float
    tp: int
    fn: int
    fp: int
    excluded: int
    lesions: list[tuple[float, float, float]] = field(default_factory=list)

    def metrics(self, region: str) -> dict[str, float]:
        """``LesionDice_<region>``, ``LesionHD95_<region>`` and the four counts."""
        values = (self.dice, self.hd95, self.tp, self.fn, self.fp, self.excluded)
        return {f"{prefix}_{region}": float(value)
                for prefix, value in zip(METRIC_PREFIXES, values, strict=True)}


def grow(box: tuple[slice, ...], by: int, shape: Sequence[int]) -> tuple[slice, ...]:
    """``box`` widened by ``by`` voxels on every side, clipped to a volume of ``shape``."""
    return tuple(slice(max(s.start - by, 0), min(s.stop + by, n))
                 for s, n in zip(box, shape, strict=True))


def label26(mask: np.ndarray) -> np.ndarray:
    """int32 labels of the 26-connected components of ``mask`` (C order of the first voxel)."""
    return ndimage.label(mask, S26)[0]


def dilation_groups(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Mask voxels numbered by the 26-connected component of the mask's dilation holding them.

    The dilation is built per component on its box (the same as dilating the whole mask);
    the dilated mask is labelled once, so the numbers are those of the scripts.
    """
    components = label26(mask)
    dilated = np.zeros(mask.shape, dtype=bool)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        grown = grow(box, iterations, mask.shape)
        dilated[grown] |= ndimage.binary_dilation(components[grown] == index, S18,
                                                  iterations=iterations)
    return np.where(mask, label26(dilated), 0)


def delete_small(groups: np.ndarray, max_voxels: int) -> np.ndarray:
    """``groups`` without the labels of at most ``max_voxels`` voxels (metrics_GLI.py
    L337-343: ``labels[counts <= thresh]`` set to 0; the background stays 0)."""
    counts = np.bincount(groups.ravel())
    small = counts <= max_voxels
    small[0] = False
    return np.where(small[groups], 0, groups)


def join_through(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``relabel_nifti_image`` of the lesions touching ``other``'s (see the module doc)."""
    lowest: dict[int, int] = {}
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = grow(box, 1, labels.shape)
        ring = ndimage.binary_dilation(labels[grown] == index, S18)
        touched = other[grown][ring]
        touched = touched[touched > 0]
        if touched.size:
            lowest[index] = int(touched.min())
    if not lowest:
        return labels
    top = int(labels.max())
    rank = {key: top + 1 + i for i, key in enumerate(sorted(set(lowest.values())))}
    lookup = np.arange(top + 1, dtype=np.int64)
    for index, key in lowest.items():
        lookup[index] = rank[key]
    return lookup[labels]


def lesion_volume(count: int, spacing: Sequence[float]) -> float:
    """Volume in mm^3 of ``count`` voxels, multiplied in the scripts' order."""
    volume = float(count)
    for side in spacing:  # np.sum(gt_tmp)*sx*sy*sz, in that order (L220)
        volume *= side
    return volume


@dataclass
class Tally:
    """Entries and counts of one region, summed over the clusters of a case."""

    lesions: list[tuple[float, float, float]] = field(default_factory=list)
    tp: int = 0
    fn: int = 0
    fp: int = 0
    excluded: int = 0

    def result(self, missing_hd95: float) -> RegionLesions:
        """The region's scores: means over the entries, ``missing_hd95`` per false positive."""
        entries = len(self.lesions) + self.fp
        if entries == 0:  # L360-374: 0/0 -> nan -> Dice 1, HD95 0
            return RegionLesions(1.0, 0.0, self.tp, self.fn, self.fp, self.excluded, [])
        dice = sum(entry[1] for entry in self.lesions) / entries
        hd95 = (sum(entry[2] for entry in self.lesions) + self.fp * missing_hd95) / entries
        return RegionLesions(dice, hd95, self.tp, self.fn, self.fp, self.excluded, self.lesions)


def match_lesions(gt: np.ndarray, pred: np.ndarray, dilation: int, spacing: Sequence[float],
           threshold_mm3: float, missing_hd95: float, tally: Tally) -> None:
    """Add one cluster's entries of a region, from its final lesions and predicted components."""
    pred_boxes = ndimage.find_objects(pred)
    matched: set[int] = set()
    for index, box in enumerate(ndimage.find_objects(gt), start=1):
        if box is None:
            continue
        grown = grow(box, dilation, gt.shape)
        lesion = gt[grown] == index
        zone = ndimage.binary_dilation(lesion, S18, iterations=dilation)
        hits = np.unique(pred[grown][zone])
        hits = hits[hits > 0]
        matched.update(int(hit) for hit in hits)
        volume = lesion_volume(int(lesion.sum()), spacing)
        if volume <= threshold_mm3:
            tally.excluded += 1
            continue
        if hits.size == 0:
            tally.fn += 1
            tally.lesions.append((volume, 0.0, missing_hd95))
            continue
        tally.tp += 1
        boxes = [box] + [pred_boxes[hit - 1] for hit in hits]
        union = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                      for a in range(3))
        truth = gt[union] == index
        found = np.isin(pred[union], hits)
        dice = 2.0 * int(np.count_nonzero(truth & found)) / (int(truth.sum()) + int(found.sum()))
        hd95 = robust_hausdorff(truth, found, spacing, 95.0)
        tally.lesions.append((volume, dice, missing_hd95 if math.isinf(hd95) else hd95))
    present = {i + 1 for i, box in enumerate(pred_boxes) if box is not None}
    tally.fp += len(present - matched)


#: Side of the blocks that group a case's voxels into clusters.
BLOCK = 8


def clusters(foreground: np.ndarray, reach: int, margin: int,
              ) -> list[tuple[tuple[slice, ...], np.ndarray | None]]:
    """Boxes of the groups of foreground voxels that are more than ``reach`` voxels apart.

    Nothing that the rules compute connects voxels farther apart than ``reach``
    (chessboard), so each group is scored alone on its box grown by ``margin``: a speck in a
    corner does not turn the tumour's box into the whole volume. Voxels are grouped by blocks of
    ``BLOCK``; blocks within ``reach`` of each other share a group.

    Returns:
        ``(box, member)`` per group: ``member`` is the bool mask (box shape) of the voxels whose
        block is the group's, None when there is one group.
    """
    shape = foreground.shape
    counts = [-(-n // BLOCK) for n in shape]
    padded = np.zeros([c * BLOCK for c in counts], dtype=bool)
    padded[: shape[0], : shape[1], : shape[2]] = foreground
    coarse = padded.reshape(counts[0], BLOCK, counts[1], BLOCK, counts[2], BLOCK).any(
        axis=(1, 3, 5))
    steps = (BLOCK - 1 + reach) // BLOCK  # block distance of two voxels within reach
    joined = ndimage.binary_dilation(coarse, S26, iterations=-(-steps // 2))
    groups = np.where(coarse, ndimage.label(joined, S26)[0], 0)
    boxes = ndimage.find_objects(groups)
    found = []
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        voxels = tuple(slice(s.start * BLOCK, min(s.stop * BLOCK, n))
                       for s, n in zip(box, shape, strict=True))
        frame = grow(voxels, margin, shape)
        member = None
        if len(boxes) > 1:
            blocks = np.ix_(*[np.arange(s.start, s.stop) // BLOCK for s in frame])
            member = groups[blocks] == index
        found.append((frame, member))
    return found
