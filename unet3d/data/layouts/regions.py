"""Region probabilities <-> a data set's label values (the ``regions`` head; NumPy only).

A region-based network (``model.head=regions``) predicts one sigmoid channel per *painted*
region of the data set's label convention
(``unet3d.data.layouts.convention.LabelConvention``), in its ``region_order``: the outermost
region first (BraTS: WT, TC, ET). The painted regions must be nested, each inside the previous
one. Turning region probabilities back into disk labels
follows nnU-Net's ``regions_class_order`` (Isensee et al., BrainLes 2020; nnU-Net v2
``LabelManager.convert_probabilities_to_segmentation``): start from the background value and,
for each painted region in order, give every voxel whose probability is ``> threshold`` the
region's *paint value*, the one label value that belongs to that region and not to the next
(inner) one. BraTS 2019: WT \\ TC = {2} (ED), TC \\ ET = {1} (NCR), ET = {4}; BraTS 2023: 2, 1, 3;
MSD brain: 1, 2, 3. An inner region overrides an outer one, also where the outer one was not
predicted (nnU-Net does the same).

Any object with ``regions`` (name -> disk values), ``region_order`` (names or None) and
``values`` (sorted disk values; training class ``k`` is ``values[k]``) works as a convention.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from unet3d.errors import ConfigError

log = logging.getLogger(__name__)

#: Region probability above which a voxel belongs to the region (nnU-Net: ``> 0.5``).
DEFAULT_THRESHOLD = 0.5


class ConventionLike(Protocol):
    """What these functions read of a ``LabelConvention``."""

    regions: Mapping[str, Sequence[int]]
    region_order: Sequence[str] | None

    @property
    def values(self) -> tuple[int, ...]:
        """Sorted disk label values; training class ``k`` is ``values[k]``."""


def _name(convention: Any) -> str:
    return f"label convention {getattr(convention, 'name', '')}".rstrip()


def region_order(convention: ConventionLike) -> tuple[str, ...]:
    """The convention's ``region_order``, or its default: regions by decreasing value-set size.

    The default follows the convention spec (ties keep the report order of ``regions``);
    a ``LabelConvention`` answers with its own ``painting_order()``.
    """
    if callable(getattr(convention, "painting_order", None)):
        return tuple(convention.painting_order())
    order = getattr(convention, "region_order", None)
    if order:
        return tuple(order)
    names = list(convention.regions)
    return tuple(sorted(names, key=lambda name: -len(set(convention.regions[name]))))


def painted_regions(convention: ConventionLike) -> tuple[str, ...]:
    """The regions a region head predicts, outer first: the nested chain of ``region_order``.

    The chain is ``region_order``'s longest prefix in which each region lies inside the
    previous one (BraTS 2019: WT, TC, ET). Regions after it (BraTS 2023's NETC and SNFH, which
    are not inside ET) are not predicted as channels; they are still scored, from the painted
    labels.

    Raises:
        ConfigError: the convention has no regions, or a region names a value the convention
            does not have.
    """
    order = region_order(convention)
    if not order:
        raise ConfigError(f"{_name(convention)}: has no evaluation regions to predict")
    known = set(int(value) for value in convention.values)
    chain: list[str] = []
    for name in order:
        if name not in convention.regions:
            raise ConfigError(f"{_name(convention)}: region_order names {name!r}, which is not "
                             f"one of its regions {list(convention.regions)}")
        members = set(int(value) for value in convention.regions[name])
        unknown = sorted(members - known)
        if unknown:
            raise ConfigError(f"{_name(convention)}: region {name} has values {unknown} that are "
                             f"not label values {sorted(known)}")
        if chain and not members < set(convention.regions[chain[-1]]):
            break
        chain.append(name)
    return tuple(chain)


def paint_values(convention: ConventionLike) -> tuple[int, tuple[int, ...]]:
    """The background value and the value painted for each painted region.

    The paint value of region ``r`` is the one value in ``r`` and not in the next painted
    region (for the innermost, its one value).

    Returns:
        ``(background, (value of region 0, value of region 1, ...))``.

    Raises:
        ConfigError: a region contributes no value or several (e.g. WT (1, 2, 4) directly
            followed by ET (4,) leaves 1 and 2: add TC to ``region_order``), or label values
            other than one background value lie outside the outermost region.
    """
    chain = painted_regions(convention)
    sets = [set(int(value) for value in convention.regions[name]) for name in chain]
    painted = []
    for index, name in enumerate(chain):
        own = sets[index] - (sets[index + 1] if index + 1 < len(sets) else set())
        if len(own) != 1:
            inner = f"not in {chain[index + 1]}" if index + 1 < len(chain) else "in it"
            raise ConfigError(
                f"{_name(convention)}: region {name} has values {sorted(own)} {inner}; a region "
                f"head needs exactly one per painted region (regions {list(chain)})")
        painted.append(own.pop())
    outside = sorted(set(int(value) for value in convention.values) - sets[0])
    if len(outside) != 1:
        raise ConfigError(
            f"{_name(convention)}: label values {outside} lie outside region {chain[0]}; a "
            f"region head can paint only one background value")
    return outside[0], tuple(painted)


def class_region_table(convention: ConventionLike) -> np.ndarray:
    """The 0/1 table of training class ``k`` (disk value ``values[k]``) in painted region ``r``.

    Returns:
        float32 ``[num_classes, num_painted_regions]``; BraTS 2019 (classes 0, 1, 2, 3 = values
        0, 1, 2, 4; regions WT, TC, ET): ``[[0,0,0], [1,1,0], [1,0,0], [1,1,1]]``.
    """
    chain = painted_regions(convention)
    values = [int(value) for value in convention.values]
    table = np.zeros((len(values), len(chain)), dtype=np.float32)
    for column, name in enumerate(chain):
        members = set(int(value) for value in convention.regions[name])
        for row, value in enumerate(values):
            table[row, column] = float(value in members)
    return table


def labels_to_region_masks(labels: np.ndarray, convention: ConventionLike) -> np.ndarray:
    """Disk labels to the painted regions' masks (the region head's targets).

    Args:
        labels: integer disk labels ``(...)``, e.g. ``(H, W, D)``.
        convention: the data set's label convention.

    Returns:
        bool ``(..., R)``: channel ``r`` is ``labels`` in painted region ``r``.
    """
    chain = painted_regions(convention)
    labels = np.asarray(labels)
    masks = [np.isin(labels, np.asarray(convention.regions[name])) for name in chain]
    return np.stack(masks, axis=-1)


def region_probabilities_to_labels(probabilities: np.ndarray, convention: ConventionLike,
                                   threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Paint region probabilities into the data set's disk label values (nnU-Net's order).

    Args:
        probabilities: float32 ``(H, W, D, R)`` (any leading shape) sigmoid probabilities of
            the painted regions, in ``painted_regions(convention)`` order (e.g. the blended,
            TTA- and fold-averaged output of a region head).
        convention: the data set's label convention.
        threshold: a voxel belongs to a region when its probability is ``> threshold``.

    Returns:
        uint8 ``(H, W, D)`` disk labels: the background value, overwritten region by region,
        outer first, by each region's paint value (``paint_values``).

    Raises:
        ValueError: the last axis is not R.
        ConfigError: the convention cannot be painted (``paint_values``).
    """
    background, values = paint_values(convention)
    probabilities = np.asarray(probabilities)
    if probabilities.ndim < 1 or probabilities.shape[-1] != len(values):
        raise ValueError(
            f"region probabilities of shape {probabilities.shape}: the last axis must hold the "
            f"{len(values)} painted regions {list(painted_regions(convention))}")
    labels = np.full(probabilities.shape[:-1], background, dtype=np.uint8)
    for channel, value in enumerate(values):
        labels[probabilities[..., channel] > threshold] = value
    return labels
