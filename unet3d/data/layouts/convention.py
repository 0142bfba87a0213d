"""Label conventions of brain-tumour data sets: label values on disk, training classes, regions.

NumPy only (no TensorFlow). A data set's labels on disk (BraTS 2019: 0, 1, 2, 4; BraTS 2023:
0, 1, 2, 3; MSD Task01: 0, 1, 2, 3 with other meanings) become training classes 0..K-1 in the
order of their values (class k = ``values[k]``), and evaluation scores the data set's own
regions (sets of label values). Sources: the BraTS challenge pages (2019: labels 1 NCR/NET, 2 ED,
4 ET; 2023: 1 NETC, 2 SNFH, 3 ET, regions WT/TC/ET), the Medical Segmentation Decathlon's
Task01_BrainTumour ``dataset.json`` (1 edema, 2 non-enhancing tumour, 3 enhancing tumour) and
nnU-Net v2's ``dataset.json`` (region-based labels with ``regions_class_order``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unet3d.errors import ConfigError

#: Canonical input channel order of every model: t1 (native), t1ce (contrast), t2, flair.
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Canonical tissues and their synonyms (compared lower-case, without spaces, ``-``, ``_``, ``/``).
#: BraTS 2019 NCR/NET, ED and BraTS 2023 NETC, SNFH name the same tissues; MSD Task01 calls
#: them non-enhancing tumour and edema. In a region-based nnU-Net ``dataset.json`` a label value
#: is named after the region painted with it: the voxels of that region outside the regions
#: painted after it (whole tumour minus core = SNFH, core minus enhancing = NETC).
TISSUE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "background": ("background", "bg"),
    "NETC": ("netc", "ncr", "ncrnet", "net", "necrosis", "necrotic", "nonenhancingtumor",
             "nonenhancingtumour", "nonenhancingtumorcore", "nonenhancingtumourcore",
             "necroticcore", "tumorcore", "tumourcore", "tc"),
    "SNFH": ("snfh", "ed", "edema", "oedema", "peritumoraledema", "peritumouraloedema",
             "surroundingflairhyperintensity", "wholetumor", "wholetumour", "wt"),
    "ET": ("et", "enhancingtumor", "enhancingtumour", "enhancing"),
    "RC": ("rc", "resectioncavity"),
}
_TISSUE_OF = {synonym: tissue for tissue, names in TISSUE_SYNONYMS.items() for synonym in names}


def _key(name: str) -> str:
    return re.sub(r"[\s\-_/()]+", "", str(name)).lower()


def tissue_of(name: str) -> str:
    """Canonical tissue of a label name (``"NCR/NET"`` -> ``"NETC"``), else the name lower-cased."""
    return _TISSUE_OF.get(_key(name), str(name).lower())


@dataclass(frozen=True)
class LabelConvention:
    """How a data set stores its segmentation, and what evaluation scores.

    Attributes:
        name: the convention's name (``brats2019``, ``brats2023``, ``msd_brain``,
            ``nnunet_raw:<dataset name>``).
        labels: label value on disk -> its name in that data set, background (0) included.
        regions: evaluation region -> the disk label values it unites, in report order.
        region_order: regions in painting order (outer first) when turning region masks back
            into labels (nnU-Net's ``regions_class_order`` analogue); None: by decreasing size
            of their value sets.

    Raises (on construction):
        ConfigError: no background 0, a negative or >255 value, an empty region or a region
            naming a value that is not a label, a ``region_order`` naming an unknown region.
    """

    name: str
    labels: Mapping[int, str]
    regions: Mapping[str, tuple[int, ...]]
    region_order: tuple[str, ...] | None = None
    _lookup: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        labels = {int(value): str(name) for value, name in dict(self.labels).items()}
        regions = {str(region): tuple(int(v) for v in values)
                   for region, values in dict(self.regions).items()}
        where = f"label convention {self.name}"
        if 0 not in labels:
            raise ConfigError(f"{where}: labels must include background 0, got {sorted(labels)}")
        if any(value < 0 or value > 255 for value in labels):
            raise ConfigError(f"{where}: label values must be in 0..255, got {sorted(labels)}")
        for region, values in regions.items():
            unknown = sorted(set(values) - set(labels))
            if not values or unknown:
                raise ConfigError(f"{where}: region {region} must list label values among "
                                  f"{sorted(labels)}, got {list(values)}")
        order = None if self.region_order is None else tuple(str(r) for r in self.region_order)
        if order is not None and set(order) - set(regions):
            raise ConfigError(f"{where}: region_order names unknown region(s) "
                              f"{sorted(set(order) - set(regions))}; regions: {list(regions)}")
        object.__setattr__(self, "labels", dict(sorted(labels.items())))
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "region_order", order)
        lookup = np.full(256, 255, dtype=np.uint8)
        for index, value in enumerate(sorted(labels)):
            lookup[value] = index
        object.__setattr__(self, "_lookup", lookup)

    @property
    def values(self) -> tuple[int, ...]:
        """Sorted disk label values; training class k is ``values[k]``."""
        return tuple(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of training classes (one per label value, background included)."""
        return len(self.labels)

    @property
    def tissues(self) -> tuple[str, ...]:
        """Canonical tissue per class (``background``, ``NETC``, ``SNFH``, ``ET``, ``RC``...)."""
        return tuple(tissue_of(self.labels[value]) for value in self.values)

    def to_classes(self, labels: np.ndarray) -> np.ndarray:
        """Disk label values -> uint8 training classes (same shape).

        Raises:
            ValueError: values that are not labels of this convention (listed).
        """
        array = np.asarray(labels)
        bad = self.invalid_values(array)
        if bad:
            raise ValueError(f"label values {bad} outside {list(self.values)}")
        return self._lookup[array.astype(np.int64)]

    def invalid_values(self, labels: np.ndarray, limit: int = 10) -> list[int]:
        """Up to ``limit`` distinct values of integer-valued ``labels`` that are not labels."""
        array = np.asarray(labels)
        invalid = (array < 0) | (array > 255)
        inside = np.where(invalid, 0, array).astype(np.int64)
        invalid |= self._lookup[inside] == 255
        if not invalid.any():
            return []
        return [v.item() for v in np.unique(array[invalid])][:limit]

    def to_labels(self, classes: np.ndarray) -> np.ndarray:
        """Training classes (0..num_classes-1) -> uint8 disk label values (same shape).

        Raises:
            ValueError: a class outside 0..num_classes-1.
        """
        array = np.asarray(classes)
        if array.size and (array.min() < 0 or array.max() >= self.num_classes):
            raise ValueError(f"classes outside 0..{self.num_classes - 1}")
        return np.asarray(self.values, dtype=np.uint8)[array.astype(np.int64)]

    def region_masks(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Bool mask (same shape) per region, in report order, from disk label values."""
        array = np.asarray(labels)
        return {region: np.isin(array, values) for region, values in self.regions.items()}

    def painting_order(self) -> tuple[str, ...]:
        """Regions in painting order (outer first): ``region_order`` or by decreasing size."""
        if self.region_order is not None:
            return self.region_order
        return tuple(sorted(self.regions, key=lambda region: -len(self.regions[region])))

    def translation_to(self, other: LabelConvention) -> np.ndarray:
        """Lookup table (uint8, length num_classes): this convention's class k -> ``other``'s
        disk label value of the same tissue (``tissues``).

        Raises:
            ConfigError: ``other`` has no label for one of this convention's tissues.
        """
        by_tissue = {tissue_of(name): value for value, name in other.labels.items()}
        table = np.zeros(self.num_classes, dtype=np.uint8)
        for index, tissue in enumerate(self.tissues):
            if tissue not in by_tissue:
                raise ConfigError(
                    f"label convention {other.name} has no label for tissue {tissue!r} of "
                    f"{self.name} (its labels: {dict(other.labels)}); the model's classes "
                    "cannot be written in that convention")
            table[index] = by_tissue[tissue]
        return table

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (string keys), read back by ``from_dict``."""
        return {
            "name": self.name,
            "labels": {str(value): name for value, name in self.labels.items()},
            "regions": {region: list(values) for region, values in self.regions.items()},
            "region_order": None if self.region_order is None else list(self.region_order),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelConvention:
        """The convention that ``to_dict`` wrote (e.g. read from a run's record)."""
        return cls(
            name=str(data["name"]),
            labels={int(value): str(name) for value, name in dict(data["labels"]).items()},
            regions={str(r): tuple(int(v) for v in values)
                     for r, values in dict(data["regions"]).items()},
            region_order=(None if data.get("region_order") is None
                          else tuple(data["region_order"])),
        )


def convention_from_config(name: str, labels: Mapping[Any, Any],
                           regions: Mapping[str, Sequence[Any]],
                           region_order: Sequence[str] | None = None) -> LabelConvention:
    """A convention from a data set's YAML (``labels``: value -> name; ``regions``: name ->
    list of values; optional ``region_order``).

    Raises:
        ConfigError: ``data.labels`` / ``data.regions`` not of that form, or a rule of
            ``LabelConvention`` broken.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise ConfigError(f"data.labels: must map label values to names, got {labels!r}")
    if not isinstance(regions, Mapping) or not regions:
        raise ConfigError(f"data.regions: must map region names to label values, got {regions!r}")
    try:
        parsed_labels = {int(value): str(text) for value, text in labels.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"data.labels: keys must be integer label values, got "
                          f"{list(labels)}") from None
    parsed_regions: dict[str, tuple[int, ...]] = {}
    for region, values in regions.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            values = [values]
        try:
            parsed_regions[str(region)] = tuple(int(v) for v in values)
        except (TypeError, ValueError):
            raise ConfigError(f"data.regions.{region}: must be a list of label values, got "
                              f"{values!r}") from None
    return LabelConvention(name, parsed_labels, parsed_regions,
                           None if region_order is None else tuple(region_order))


#: BraTS 2018-2021 (the default, and what runs recorded before conventions existed).
BRATS2019 = LabelConvention(
    "brats2019", {0: "background", 1: "NCR", 2: "ED", 4: "ET"},
    {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}, ("WT", "TC", "ET"))
#: BraTS 2023 onward (GLI, MET, PED, SSA, MEN).
BRATS2023 = LabelConvention(
    "brats2023", {0: "background", 1: "NETC", 2: "SNFH", 3: "ET"},
    {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3), "NETC": (1,), "SNFH": (2,)}, ("WT", "TC", "ET"))
#: Medical Segmentation Decathlon Task01_BrainTumour (its dataset.json).
MSD_BRAIN = LabelConvention(
    "msd_brain", {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}, ("WT", "TC", "ET"))
