"""Lesion-wise Dice and HD95 as the BraTS 2023 and 2024 challenges rank (NumPy/SciPy).

Sources, read line by line (the repositories' code is not copied here; the quirks it has are
reproduced and named with the line they come from):

- BraTS 2023: rachitsaluja/BraTS-2023-Metrics ``metrics.py`` (commit 43c9052),
  ``get_LesionWiseResults(pred, gt, "BraTS-GLI")`` and ``get_LesionWiseScores``.
- BraTS 2024: rachitsaluja/BraTS-2024-Metrics ``metrics_GLI.py`` (commit f1131e3), the
  post-treatment glioma rules, with ``save_tmp_files`` and ``combine_lesions_tissues``.

Per region (a set of tissues: WT, TC, ET; 2024 adds NETC, SNFH, RC alone):

1. Ground-truth lesions: the region's 26-connected components (``cc3d``) joined when their
   dilations touch: the mask is dilated ``dilation`` times with the 18-connected element
   (``binary_dilation(generate_binary_structure(3, 2), iterations=...)``), the dilated mask's
   26-connected components number the lesions, and each ground-truth voxel takes the number of
   the dilated component holding it (2023 ``metrics.py`` L185-196, L78-110).
2. Predicted components: 2023, the prediction's 26-connected components (L188). 2024, the
   prediction is grouped by dilation like the ground truth and groups of at most
   ``prediction_min_voxels`` voxels are deleted (``metrics_GLI.py`` L327-343), and NETC, ET,
   RC and SNFH lesions of either side are further joined across tissues (below).
3. Matching: every predicted component that overlaps the dilation of a ground-truth lesion
   belongs to it (L217-229). The lesion's Dice compares the undilated lesion with the union of
   those components (whole, not cut to the dilation), its HD95 is DeepMind's robust
   Hausdorff distance (``unet3d.evaluation.surface_distance``); a lesion with no component
   scores Dice 0 and the penalty HD95 (``inf`` replaced by 374 mm in 2023, L355; by 337 mm in
   2024, ``metrics_GLI.py`` L922-923, L952).
4. Lesions of volume <= ``threshold_mm3`` (voxel count times the product of the spacing, so
   mm^3: L220, L343-358) are left out of the score, but the components they match are still
   not false positives (L225-229 run before the threshold is applied).
5. False positives: predicted components that overlap no lesion's dilation (L250-252); each
   adds an entry of Dice 0 and the penalty HD95.
6. The region's score is the mean over the entries (kept lesions and false positives); no
   entry at all (both empty, or only excluded lesions and no false positive) gives Dice 1 and
   HD95 0 (the ``except``/``isnan`` branches of L360-374).

2024 quirks reproduced (``metrics_GLI.py``):

- ``if (t == "SFNH") | (t == "NETC") | (t == "RC")`` (L270, L316, L596): the misspelt
  ``SFNH`` never matches, so SNFH is dilated 3 times like WT, TC and ET; NETC and RC 5 times.
- Thresholds (L311-314, L892-895): ET 10, every other region 20; in mm^3 for ground-truth
  lesions, in voxels for the deletion of small predicted groups (``counts <= thresh``).
- Cross-tissue joining (``combine_lesions_tissues`` L583-589 with L489-580, ``get_touching_labels``
  L363-403, ``relabel_nifti_image`` L406-442): NETC lesions are joined through ET then RC,
  ET through NETC then RC, RC through ET then NETC, SNFH through ET, RC then NETC, always
  against the other tissue's dilation-grouped labels of step 1 (not its joined ones). A lesion
  touches another tissue's lesion when one is within the other's single 18-connected dilation;
  each lesion that touches some joins the group of the lowest-numbered lesion it touches
  (``sorted(tuples)``: the first pair of a label decides), so joining is not transitive through
  a lesion's other contacts. Numbers follow the dilated mask's components in C order (``cc3d``
  on the C-ordered ``binary_dilation`` output, L282-285). The ``len(touching_labels) > 1``
  test (L496 ...) only decides whether labels are renamed, never how they are grouped.
- The legacy whole-region Dice/HD95 the scripts also print (computed on the label images,
  after the small groups are deleted) are not reproduced: unet3d's voxel-wise ``Dice_<region>``
  and ``HD95_<region>`` (``unet3d.evaluation.metrics``) follow ``brats-evaluation`` instead.

Labelling here is ``scipy.ndimage.label`` with the full 3x3x3 element, which numbers
components in C order of their first voxel exactly as ``cc3d`` does on C-ordered arrays;
everything is computed on the bounding boxes of lesions inside the box of the case's tumour,
which gives the scripts' numbers (``tests/evaluation/test_lesionwise_official.py`` compares
them with the scripts' outputs) without their temporary files and whole-volume loops.
Speed: ``benchmarks/lesionwise_speed.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from unet3d.evaluation.surface_distance import robust_hausdorff

_S18 = ndimage.generate_binary_structure(3, 2)
_S26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class LesionwiseRules:
    """One challenge year's lesion-wise rules.

    Attributes:
        name: ``brats2023``, ``brats2023_men``, ``brats2023_met`` or ``brats2024``.
        regions: region -> the canonical tissues it unites (``unet3d.data.convention``), in
            report order.
        dilation: region -> dilation iterations (18-connected element).
        threshold_mm3: region -> ground-truth lesions of at most this volume (mm^3) are left out.
        missing_hd95: HD95 (mm) of a missed lesion or a false-positive component.
        prediction_min_voxels: region -> predicted groups of at most this many voxels are
            deleted first (2024); empty: none.
        join_through: region -> the regions through which its lesions are joined, in order (2024).
    """

    name: str
    regions: Mapping[str, tuple[str, ...]]
    dilation: Mapping[str, int]
    threshold_mm3: Mapping[str, float]
    missing_hd95: float
    prediction_min_voxels: Mapping[str, int] = field(default_factory=dict)
    join_through: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def max_dilation(self) -> int:
        """The largest dilation of any region."""
        return max(self.dilation.values())


_TISSUES_2023 = {"WT": ("NETC", "SNFH", "ET"), "TC": ("NETC", "ET"), "ET": ("ET",)}


def _rules_2023(name: str, dilation: int, threshold: float) -> LesionwiseRules:
    # metrics.py L307-321 (challenge parameters), L326 (regions WT, TC, ET), L55-73 (labels).
    return LesionwiseRules(name, _TISSUES_2023, dict.fromkeys(_TISSUES_2023, dilation),
                           dict.fromkeys(_TISSUES_2023, threshold), 374.0)


_REGIONS_2024 = {"WT": ("NETC", "SNFH", "ET"), "TC": ("NETC", "ET"), "NETC": ("NETC",),
                 "SNFH": ("SNFH",), "ET": ("ET",), "RC": ("RC",)}
#: Every lesion-wise rule set computed here (``brats2025`` is ``brats-evaluation``'s).
RULES: dict[str, LesionwiseRules] = {
    # GLI, SSA and PED: dilation 3, 50 mm^3; MEN: 1, 50; MET: 1, 2 (metrics.py L307-321).
    "brats2023": _rules_2023("brats2023", 3, 50.0),
    "brats2023_men": _rules_2023("brats2023_men", 1, 50.0),
    "brats2023_met": _rules_2023("brats2023_met", 1, 2.0),
    "brats2024": LesionwiseRules(
        "brats2024", _REGIONS_2024,
        # L270/L596: NETC and RC 5, SNFH 3 through the "SFNH" misspelling.
        {"WT": 3, "TC": 3, "NETC": 5, "SNFH": 3, "ET": 3, "RC": 5},
        {region: (10.0 if region == "ET" else 20.0) for region in _REGIONS_2024},
        337.0,
        {region: (10 if region == "ET" else 20) for region in _REGIONS_2024},
        {"NETC": ("ET", "RC"), "ET": ("NETC", "RC"), "RC": ("ET", "NETC"),
         "SNFH": ("ET", "RC", "NETC")}),
}

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


def metric_keys(rules: LesionwiseRules) -> tuple[str, ...]:
    """The keys ``lesionwise_metrics`` returns for ``rules``: per prefix, every region."""
    return tuple(f"{prefix}_{region}" for prefix in METRIC_PREFIXES for region in rules.regions)


def region_values(rules: LesionwiseRules, convention: Any) -> dict[str, tuple[int, ...]]:
    """Region -> the label values on disk it unites, through the convention's tissues.

    Args:
        rules: the rule set.
        convention: a ``unet3d.data.convention.LabelConvention`` (its ``tissues``).

    Raises:
        ValueError: a tissue the rules need has no label in the convention.
    """
    by_tissue: dict[str, list[int]] = {}
    for value, tissue in zip(convention.values, convention.tissues, strict=True):
        by_tissue.setdefault(tissue, []).append(int(value))
    values = {}
    for region, tissues in rules.regions.items():
        missing = [tissue for tissue in tissues if tissue not in by_tissue]
        if missing:
            raise ValueError(f"lesion-wise {rules.name}: label convention {convention.name} has "
                             f"no label for {', '.join(missing)} (region {region}); its labels "
                             f"are {dict(convention.labels)}")
        values[region] = tuple(sorted(v for tissue in tissues for v in by_tissue[tissue]))
    return values


def _grow(box: tuple[slice, ...], by: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - by, 0), min(s.stop + by, n))
                 for s, n in zip(box, shape, strict=True))


def _label(mask: np.ndarray) -> np.ndarray:
    return ndimage.label(mask, _S26)[0]


def _dilation_groups(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Mask voxels numbered by the 26-connected component of the mask's dilation holding them.

    The dilation is built per component on its box (the same as dilating the whole mask);
    the dilated mask is labelled once, so the numbers are those of the scripts.
    """
    components = _label(mask)
    dilated = np.zeros(mask.shape, dtype=bool)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        grown = _grow(box, iterations, mask.shape)
        dilated[grown] |= ndimage.binary_dilation(components[grown] == index, _S18,
                                                  iterations=iterations)
    return np.where(mask, _label(dilated), 0)


def _delete_small(groups: np.ndarray, max_voxels: int) -> np.ndarray:
    # metrics_GLI.py L337-343: labels[counts <= thresh] set to 0 (background stays 0).
    counts = np.bincount(groups.ravel())
    small = counts <= max_voxels
    small[0] = False
    return np.where(small[groups], 0, groups)


def _join_through(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``relabel_nifti_image`` of the lesions touching ``other``'s (see the module doc)."""
    lowest: dict[int, int] = {}
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = _grow(box, 1, labels.shape)
        ring = ndimage.binary_dilation(labels[grown] == index, _S18)
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


def _volume(count: int, spacing: Sequence[float]) -> float:
    volume = float(count)
    for side in spacing:  # np.sum(gt_tmp)*sx*sy*sz, in that order (L220)
        volume *= side
    return volume


@dataclass
class _Tally:
    """Entries and counts of one region, summed over the clusters of a case."""

    lesions: list[tuple[float, float, float]] = field(default_factory=list)
    tp: int = 0
    fn: int = 0
    fp: int = 0
    excluded: int = 0

    def result(self, missing_hd95: float) -> RegionLesions:
        entries = len(self.lesions) + self.fp
        if entries == 0:  # L360-374: 0/0 -> nan -> Dice 1, HD95 0
            return RegionLesions(1.0, 0.0, self.tp, self.fn, self.fp, self.excluded, [])
        dice = sum(entry[1] for entry in self.lesions) / entries
        hd95 = (sum(entry[2] for entry in self.lesions) + self.fp * missing_hd95) / entries
        return RegionLesions(dice, hd95, self.tp, self.fn, self.fp, self.excluded, self.lesions)


def _match(gt: np.ndarray, pred: np.ndarray, dilation: int, spacing: Sequence[float],
           threshold_mm3: float, missing_hd95: float, tally: _Tally) -> None:
    """Add one cluster's entries of a region, from its final lesions and predicted components."""
    pred_boxes = ndimage.find_objects(pred)
    matched: set[int] = set()
    for index, box in enumerate(ndimage.find_objects(gt), start=1):
        if box is None:
            continue
        grown = _grow(box, dilation, gt.shape)
        lesion = gt[grown] == index
        zone = ndimage.binary_dilation(lesion, _S18, iterations=dilation)
        hits = np.unique(pred[grown][zone])
        hits = hits[hits > 0]
        matched.update(int(hit) for hit in hits)
        volume = _volume(int(lesion.sum()), spacing)
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
_BLOCK = 8


def _clusters(foreground: np.ndarray, reach: int, margin: int,
              ) -> list[tuple[tuple[slice, ...], np.ndarray | None]]:
    """Boxes of the groups of foreground voxels that are more than ``reach`` voxels apart.

    Nothing that the rules compute connects voxels farther apart than ``reach``
    (chessboard), so each group is scored alone on its box grown by ``margin``: a speck in a
    corner does not turn the tumour's box into the whole volume. Voxels are grouped by blocks of
    ``_BLOCK``; blocks within ``reach`` of each other share a group.

    Returns:
        ``(box, member)`` per group: ``member`` is the bool mask (box shape) of the voxels whose
        block is the group's, None when there is one group.
    """
    shape = foreground.shape
    counts = [-(-n // _BLOCK) for n in shape]
    padded = np.zeros([c * _BLOCK for c in counts], dtype=bool)
    padded[: shape[0], : shape[1], : shape[2]] = foreground
    coarse = padded.reshape(counts[0], _BLOCK, counts[1], _BLOCK, counts[2], _BLOCK).any(
        axis=(1, 3, 5))
    steps = (_BLOCK - 1 + reach) // _BLOCK  # block distance of two voxels within reach
    joined = ndimage.binary_dilation(coarse, _S26, iterations=-(-steps // 2))
    groups = np.where(coarse, ndimage.label(joined, _S26)[0], 0)
    boxes = ndimage.find_objects(groups)
    found = []
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        voxels = tuple(slice(s.start * _BLOCK, min(s.stop * _BLOCK, n))
                       for s, n in zip(box, shape, strict=True))
        frame = _grow(voxels, margin, shape)
        member = None
        if len(boxes) > 1:
            blocks = np.ix_(*[np.arange(s.start, s.stop) // _BLOCK for s in frame])
            member = groups[blocks] == index
        found.append((frame, member))
    return found


def _as_labels(volume: np.ndarray) -> np.ndarray:
    array = np.asarray(volume)
    if array.dtype == np.uint8:
        return array
    inside = (array >= 0) & (array <= 255)
    return np.where(inside, array, 0).astype(np.uint8)


def lesionwise_regions(pred: np.ndarray, ref: np.ndarray, rules: LesionwiseRules,
                       values: Mapping[str, Sequence[int]],
                       spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, RegionLesions]:
    """Lesion-wise results of one case, per region of ``rules``.

    Args:
        pred: predicted label volume ``(X, Y, Z)`` in disk label values, integer (0..255).
        ref: reference label volume, same shape.
        rules: the rule set (``RULES[...]``).
        values: region -> label values (``region_values(rules, convention)``).
        spacing: voxel sides in mm, in array axis order (from the NIfTI header's zooms).

    Returns:
        Region -> ``RegionLesions``, in ``rules.regions`` order.

    Raises:
        ValueError: shapes differ or are not 3D.
    """
    pred, ref = _as_labels(pred), _as_labels(ref)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} must be 3D volumes "
                         "of one shape")
    spacing = tuple(float(side) for side in spacing)
    regions = list(rules.regions)
    bits = np.zeros(256, dtype=np.uint8)  # label value -> one bit per region holding it
    for bit, region in enumerate(regions):
        bits[list(values[region])] |= np.uint8(1 << bit)
    pred_bits, ref_bits = bits[pred], bits[ref]
    tallies = {region: _Tally() for region in regions}
    # Joining dilations touch within 2 * dilation + 1, matches lie within the dilation.
    reach = 2 * rules.max_dilation + 2
    for frame, member in _clusters((pred_bits | ref_bits) > 0, reach, rules.max_dilation + 2):
        gt_bits, found_bits = ref_bits[frame], pred_bits[frame]
        if member is not None:
            gt_bits, found_bits = gt_bits * member, found_bits * member
        gt_groups, pred_groups = {}, {}
        for bit, region in enumerate(regions):
            dilation = rules.dilation[region]
            gt_groups[region] = _dilation_groups((gt_bits >> bit) & 1 > 0, dilation)
            mask = (found_bits >> bit) & 1 > 0
            if region in rules.prediction_min_voxels:
                pred_groups[region] = _delete_small(_dilation_groups(mask, dilation),
                                                    rules.prediction_min_voxels[region])
            else:
                pred_groups[region] = _label(mask)
        for region in regions:
            gt, found = gt_groups[region], pred_groups[region]
            for other in rules.join_through.get(region, ()):
                gt = _join_through(gt, gt_groups[other])
                found = _join_through(found, pred_groups[other])
            _match(gt, found, rules.dilation[region], spacing, rules.threshold_mm3[region],
                   rules.missing_hd95, tallies[region])
    return {region: tallies[region].result(rules.missing_hd95) for region in regions}


def lesionwise_metrics(pred: np.ndarray, ref: np.ndarray, rules: LesionwiseRules,
                       convention: Any, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                       ) -> dict[str, float]:
    """Flat lesion-wise metrics of one case (``metric_keys(rules)``).

    Args:
        pred: predicted label volume ``(X, Y, Z)``, disk label values of ``convention``.
        ref: reference label volume, same shape.
        rules: the rule set.
        convention: the data set's ``LabelConvention`` (which values are which tissue).
        spacing: voxel sides in mm.

    Returns:
        ``LesionDice_<region>``, ``LesionHD95_<region>`` (mm), ``LesionTP_<region>``,
        ``LesionFN_<region>``, ``LesionFP_<region>``, ``LesionExcluded_<region>`` as floats.

    Raises:
        ValueError: see ``lesionwise_regions`` and ``region_values``.
    """
    results = lesionwise_regions(pred, ref, rules, region_values(rules, convention), spacing)
    flat: dict[str, float] = {}
    for region, result in results.items():
        flat.update(result.metrics(region))
    return {key: flat[key] for key in metric_keys(rules)}
