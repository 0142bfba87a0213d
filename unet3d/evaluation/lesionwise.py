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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unet3d.evaluation.lesions import (
    METRIC_PREFIXES,
    RegionLesions,
    Tally,
    clusters,
    delete_small,
    dilation_groups,
    join_through,
    label26,
    match_lesions,
)


@dataclass(frozen=True)
class LesionwiseRules:
    """One challenge year's lesion-wise rules.

    Attributes:
        name: ``brats2023``, ``brats2023_men``, ``brats2023_met`` or ``brats2024``.
        regions: region -> the canonical tissues it unites (``unet3d.data.layouts.convention``), in
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

def metric_keys(rules: LesionwiseRules) -> tuple[str, ...]:
    """The keys ``lesionwise_metrics`` returns for ``rules``: per prefix, every region."""
    return tuple(f"{prefix}_{region}" for prefix in METRIC_PREFIXES for region in rules.regions)


def region_values(rules: LesionwiseRules, convention: Any) -> dict[str, tuple[int, ...]]:
    """Region -> the label values on disk it unites, through the convention's tissues.

    Args:
        rules: the rule set.
        convention: a ``unet3d.data.layouts.convention.LabelConvention`` (its ``tissues``).

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
    tallies = {region: Tally() for region in regions}
    # Joining dilations touch within 2 * dilation + 1, matches lie within the dilation.
    reach = 2 * rules.max_dilation + 2
    for frame, member in clusters((pred_bits | ref_bits) > 0, reach, rules.max_dilation + 2):
        gt_bits, found_bits = ref_bits[frame], pred_bits[frame]
        if member is not None:
            gt_bits, found_bits = gt_bits * member, found_bits * member
        gt_groups, pred_groups = {}, {}
        for bit, region in enumerate(regions):
            dilation = rules.dilation[region]
            gt_groups[region] = dilation_groups((gt_bits >> bit) & 1 > 0, dilation)
            mask = (found_bits >> bit) & 1 > 0
            if region in rules.prediction_min_voxels:
                pred_groups[region] = delete_small(dilation_groups(mask, dilation),
                                                    rules.prediction_min_voxels[region])
            else:
                pred_groups[region] = label26(mask)
        for region in regions:
            gt, found = gt_groups[region], pred_groups[region]
            for other in rules.join_through.get(region, ()):
                gt = join_through(gt, gt_groups[other])
                found = join_through(found, pred_groups[other])
            match_lesions(gt, found, rules.dilation[region], spacing, rules.threshold_mm3[region],
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


#: ``evaluation.lesionwise=auto``: label convention name -> rules (others: off, as BraTS
#: 2018-2021 and the MSD ranked voxel-wise).
AUTO_RULES: dict[str, str] = {"brats2023": "brats2023", "brats2024_post": "brats2024"}


def resolve_rules(setting: str | None, convention: Any) -> str | None:
    """The rule set that ``evaluation.lesionwise`` asks for on a data set; None for none.

    Args:
        setting: ``auto``, ``off`` (or None) or a rule name (``unet3d.config.LESIONWISE_RULES``).
        convention: the data set's ``LabelConvention``.
    """
    if setting in (None, "off"):
        return None
    if setting == "auto":
        return AUTO_RULES.get(str(getattr(convention, "name", "")))
    return str(setting)


class LesionwiseScorer:
    """Scores one case: ``scorer(pred, ref, spacing) -> {LesionDice_ET: ..., ...}``.

    Args:
        rules: a name of ``RULES``.
        convention: the data set's ``LabelConvention`` (the values of each tissue).

    Raises:
        ConfigError: ``evaluation.lesionwise: ...`` the convention lacks a tissue the rules need.
    """

    def __init__(self, rules: str, convention: Any) -> None:
        from unet3d.errors import ConfigError

        self.name = rules
        self.rules = RULES[rules]
        try:
            self.values = region_values(self.rules, convention)
        except ValueError as error:
            raise ConfigError(f"evaluation.lesionwise: {error}") from None

    def keys(self) -> tuple[str, ...]:
        """The metric names of every case, in order (``metric_keys``)."""
        return metric_keys(self.rules)

    def __call__(self, pred: np.ndarray, ref: np.ndarray,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
        """The case's flat lesion-wise metrics (``lesionwise_metrics``'s keys)."""
        results = lesionwise_regions(pred, ref, self.rules, self.values, spacing)
        flat: dict[str, float] = {}
        for region, result in results.items():
            flat.update(result.metrics(region))
        return flat


def lesionwise_scorer(setting: str | None, convention: Any) -> Any:
    """The scorer of ``evaluation.lesionwise`` for a data set, or None (off / auto on a data set
    ranked voxel-wise).

    ``brats2025`` is the ``brats-evaluation`` package's (``unet3d.evaluation.brats2025``).

    Raises:
        ConfigError: ``evaluation.lesionwise: ...`` an unknown name, a convention without the
            tissues, or ``brats2025`` without the ``[brats]`` extra installed.
    """
    from unet3d.errors import ConfigError

    rules = resolve_rules(setting, convention)
    if rules is None:
        return None
    if rules == "brats2025":
        from unet3d.evaluation.brats2025 import Brats2025Scorer

        return Brats2025Scorer(convention)
    if rules not in RULES:
        raise ConfigError(f"evaluation.lesionwise: must be auto, off, brats2025 or one of "
                          f"{', '.join(RULES)}, got {setting!r}")
    return LesionwiseScorer(rules, convention)
