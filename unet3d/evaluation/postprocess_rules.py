"""The post-processing rules applied to predicted labels (NumPy/SciPy), as chosen by
``unet3d.evaluation.postprocess.select_postprocessing`` on a sweep's out-of-fold predictions.

Three rules, in the terms of the data set's painted regions (``unet3d.data.layouts.regions``; BraTS:
WT ⊃ TC ⊃ ET), applied in this order:

- **largest whole-tumour component** (Isensee et al., BrainLes 2020, section 2.4; nnU-Net's
  ``determine_postprocessing``): keep the largest connected component of the outermost region
  (WT) and set the voxels of the others to background (``scipy.ndimage.label``, 6-connected);
- **small components removed** per region (the rule the BraTS 2023 and 2024 winners tuned on
  the lesion-wise ranking, where each false-positive component costs an entry of Dice 0 and
  HD95 374/337 mm): the 26-connected components (as the lesion-wise scripts count them) of a
  painted region smaller than its threshold are relabelled with the value painted for the next
  region out (WT: background; TC: the WT-only value, SNFH/edema; ET: the TC-only value,
  NETC/NCR), outer regions first;
- **small ET to NCR**: when a case's predicted innermost region (ET) is smaller than a
  threshold, relabel it with the value painted for the next region out (NCR). A case without
  enhancing tumour scores ET Dice 1 only when nothing is predicted.

Volumes are in voxels, or mm^3 with ``unit="mm3"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from unet3d.data.layouts.regions import paint_values, painted_regions
from unet3d.errors import ConfigError

#: Units of the volume thresholds.
UNITS = ("voxels", "mm3")


@dataclass(frozen=True)
class PostprocessingRules:
    """The post-processing applied to predicted labels (nothing by default).

    Attributes:
        keep_largest_wt_component: keep only the largest connected component of the outermost
            painted region (WT).
        et_to_ncr_below: relabel the innermost region (ET) as the next region's value (NCR)
            when its predicted volume is below this, in ``unit``; None: never.
        unit: ``voxels`` or ``mm3``.
        remove_components_below: ``((region, threshold), ...)``: components of a painted
            region smaller than its threshold (``unit``) are relabelled, outer regions first.
    """

    keep_largest_wt_component: bool = False
    et_to_ncr_below: float | None = None
    unit: str = "voxels"
    remove_components_below: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ConfigError(f"postprocess.unit: must be one of {', '.join(UNITS)}, "
                              f"got {self.unit!r}")

    def describe(self) -> str:
        """``largest WT component + ET -> NCR below 200 voxels`` (``none`` when empty)."""
        parts = ["largest WT component"] if self.keep_largest_wt_component else []
        parts += [f"{region} components below {threshold:g} {self.unit} removed"
                  for region, threshold in self.remove_components_below]
        if self.et_to_ncr_below is not None:
            parts.append(f"ET -> NCR below {self.et_to_ncr_below:g} {self.unit}")
        return " + ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``from_dict`` reads it back)."""
        record = asdict(self)
        record["remove_components_below"] = dict(self.remove_components_below)
        return record

    def with_component_threshold(self, region: str, threshold: float) -> PostprocessingRules:
        """These rules with ``region``'s component threshold set (kept in painting order)."""
        thresholds = dict(self.remove_components_below)
        thresholds[region] = float(threshold)
        return replace(self, remove_components_below=tuple(thresholds.items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostprocessingRules:
        """The rules of ``to_dict``'s form; absent keys take the defaults (older records)."""
        below = data.get("et_to_ncr_below")
        components = data.get("remove_components_below") or {}
        return cls(bool(data.get("keep_largest_wt_component", False)),
                   None if below is None else float(below), str(data.get("unit", "voxels")),
                   tuple((str(r), float(t)) for r, t in dict(components).items()))


def keep_largest_component(labels: np.ndarray, convention: Any) -> np.ndarray:
    """Labels with only the largest connected component of the outermost region kept.

    Args:
        labels: uint8 ``(H, W, D)`` disk label values.
        convention: the data set's label convention.

    Returns:
        A copy; voxels of the other components become the background value.
    """
    background, _ = paint_values(convention)
    outer = np.isin(labels, convention.regions[painted_regions(convention)[0]])
    components, count = ndimage.label(outer)
    result = np.array(labels, copy=True)
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        result[outer & (components != int(np.argmax(sizes)) + 1)] = background
    return result


def small_et_to_ncr(labels: np.ndarray, convention: Any, threshold: float,
                    unit: str = "voxels",
                    spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Relabel the innermost region as the next one's value when it is smaller than ``threshold``.

    Args:
        labels: uint8 ``(H, W, D)`` disk label values.
        convention: the data set's label convention (at least two painted regions).
        threshold: volume below which the region is relabelled, in ``unit``.
        unit: ``voxels`` or ``mm3`` (voxels times the product of ``spacing``).
        spacing: voxel sides in mm.

    Returns:
        A copy of ``labels``, relabelled or not.

    Raises:
        ConfigError: fewer than two painted regions.
    """
    chain = painted_regions(convention)
    if len(chain) < 2:
        raise ConfigError(f"postprocess: the ET rule needs two nested regions, "
                          f"{getattr(convention, 'name', '')} paints {list(chain)}")
    _, values = paint_values(convention)
    inner = np.isin(labels, convention.regions[chain[-1]])
    count = int(inner.sum())
    volume = count * (float(np.prod(spacing)) if unit == "mm3" else 1.0)
    result = np.array(labels, copy=True)
    if 0 < volume < threshold:
        result[inner] = values[-2]
    return result


def _outer_values(convention: Any) -> dict[str, int]:
    """Painted region -> the value its removed components take: the next region out's own
    value (background for the outermost).

    Raises:
        ConfigError: the next region out has no single value of its own.
    """
    chain = painted_regions(convention)
    sets = [set(int(v) for v in convention.regions[name]) for name in chain]
    background = min(set(int(v) for v in convention.values) - set().union(*sets), default=0)
    values = {chain[0]: background}
    for index in range(1, len(chain)):
        own = sets[index - 1] - sets[index]
        if len(own) != 1:
            raise ConfigError(f"postprocess: {chain[index - 1]} has no single value outside "
                              f"{chain[index]} to relabel removed {chain[index]} components with")
        values[chain[index]] = own.pop()
    return values


def remove_small_components(labels: np.ndarray, convention: Any,
                            thresholds: Sequence[tuple[str, float]], unit: str = "voxels",
                            spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Relabel the 26-connected components of painted regions smaller than their threshold.

    Args:
        labels: uint8 ``(H, W, D)`` disk label values.
        convention: the data set's label convention.
        thresholds: ``(region, threshold)`` pairs; regions are processed outer first.
        unit: ``voxels`` or ``mm3``.
        spacing: voxel sides in mm.

    Returns:
        A copy; removed voxels take the next region out's value (``_outer_values``).

    Raises:
        ConfigError: a region that is not painted.
    """
    chain = painted_regions(convention)
    unknown = [region for region, _ in thresholds if region not in chain]
    if unknown:
        raise ConfigError(f"postprocess: component thresholds for {unknown}; the painted "
                          f"regions are {list(chain)}")
    wanted = dict(thresholds)
    replacement = _outer_values(convention)
    voxel = float(np.prod(spacing)) if unit == "mm3" else 1.0
    result = np.array(labels, copy=True)
    for region in chain:
        if region not in wanted:
            continue
        mask = np.isin(result, convention.regions[region])
        components, count = ndimage.label(mask, np.ones((3, 3, 3), dtype=bool))
        if count == 0:
            continue
        sizes = np.bincount(components.ravel()) * voxel
        small = sizes < wanted[region]
        small[0] = False
        result[small[components]] = replacement[region]
    return result


def apply_postprocessing(labels: np.ndarray, rules: PostprocessingRules, convention: Any,
                         spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Apply ``rules`` to one case's predicted labels: the largest WT component, the small
    components, then the ET rule.

    Args:
        labels: uint8 ``(H, W, D)`` predicted disk label values.
        rules: what to apply (``load_postprocessing``).
        convention: the data set's label convention.
        spacing: voxel sides in mm (for ``unit="mm3"``).

    Returns:
        uint8 ``(H, W, D)`` labels (a copy).
    """
    result = np.asarray(labels, dtype=np.uint8)
    if rules.keep_largest_wt_component:
        result = keep_largest_component(result, convention)
    if rules.remove_components_below:
        result = remove_small_components(result, convention, rules.remove_components_below,
                                         rules.unit, spacing)
    if rules.et_to_ncr_below is not None:
        result = small_et_to_ncr(result, convention, rules.et_to_ncr_below, rules.unit, spacing)
    return np.array(result, dtype=np.uint8, copy=True)
