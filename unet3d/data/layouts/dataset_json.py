"""Readers of folders described by a ``dataset.json``: MSD tasks and nnU-Net v2 raw data sets.

- ``MSDFolder``: Medical Segmentation Decathlon (Task01_BrainTumour): ``imagesTr/<case>.nii.gz``
  one 4D volume (H, W, D, C) with the channels of ``dataset.json`` ``modality``,
  ``labelsTr/<case>.nii.gz``, ``imagesTs/`` without labels; ``training`` lists the files.
- ``NNUNetRawFolder``: nnU-Net v2 raw format: ``imagesTr/<case>_<XXXX><file_ending>`` one file
  per channel of ``channel_names``, ``labelsTr/<case><file_ending>``; ``labels`` maps names to
  values (or, region-based, to lists of values, with ``regions_class_order``); ``numTraining``.

Either reader also accepts an images folder itself (``.../imagesTs``, nnU-Net's ``-i imagesTs``
habit): ``dataset.json`` is then read from its parent, and labels from the sibling
``labels<suffix>`` folder when there is one. Channel names map to the canonical modalities by
the synonyms of ``CHANNEL_SYNONYMS``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unet3d.data.layouts.case_folders import check_folder, strip_extension
from unet3d.data.layouts.cases import CaseFiles
from unet3d.data.layouts.convention import (
    MODALITIES,
    LabelConvention,
    convention_from_config,
    tissue_of,
)
from unet3d.errors import DataError

logger = logging.getLogger(__name__)

#: Channel names (lower-case, without spaces, ``-``, ``_``) -> canonical modality.
CHANNEL_SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("t1", "t1w", "t1n", "native", "nativet1", "t1native"), "t1"),
    **dict.fromkeys(("t1ce", "t1c", "t1gd", "t1wgd", "t1wce", "t1contrast", "t1post"), "t1ce"),
    **dict.fromkeys(("t2", "t2w"), "t2"),
    **dict.fromkeys(("flair", "t2f", "t2flair", "t2wflair"), "flair"),
}
#: Standard names of nnU-Net's BraTS regions (``whole tumor`` -> ``WT`` ...).
REGION_NAMES: dict[str, str] = {
    **dict.fromkeys(("wholetumor", "wholetumour", "wt"), "WT"),
    **dict.fromkeys(("tumorcore", "tumourcore", "tc"), "TC"),
    **dict.fromkeys(("enhancingtumor", "enhancingtumour", "et"), "ET"),
}


def _key(name: Any) -> str:
    return re.sub(r"[\s\-_/()]+", "", str(name)).lower()


def _split_folder(folder: Path) -> tuple[Path, Path, Path | None, bool]:
    """(root holding dataset.json, images folder, labels folder or None, is the training set)."""
    folder = check_folder(folder)
    if (folder / "dataset.json").is_file():
        return folder, folder / "imagesTr", folder / "labelsTr", True
    parent = folder.parent
    if (parent / "dataset.json").is_file() and folder.name.startswith("images"):
        labels = parent / ("labels" + folder.name[len("images"):])
        training = folder.name == "imagesTr"
        return parent, folder, labels if labels.is_dir() else None, training
    raise DataError(f"{folder}: no dataset.json here nor in its parent (expected a data set "
                    "folder with dataset.json, imagesTr/ and labelsTr/, or its imagesTs/ folder)")


def read_dataset_json(root: Path, required: Sequence[str]) -> dict[str, Any]:
    """Parse ``<root>/dataset.json``; DataError naming it when unreadable or a key is missing."""
    path = root / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: unreadable dataset.json ({reason})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    missing = [key for key in required if key not in data]
    if missing:
        hint = ("; an nnU-Net raw data set: use data=nnunet_raw" if "channel_names" in data else
                "; a Medical Segmentation Decathlon task: use data=msd_brain"
                if "modality" in data else "")
        raise DataError(f"{path}: missing key(s) {missing}{hint}")
    return data


def canonical_channels(path: Path, key: str, names: Any) -> dict[str, int]:
    """``{"0": "FLAIR", ...}`` -> canonical modality -> channel index (all four, once each).

    Raises:
        DataError: naming ``path`` and ``key``: not a mapping of indices, a channel that is not
            one of the four modalities, a modality twice or missing.
    """
    if not isinstance(names, Mapping) or not names:
        raise DataError(f"{path}: {key} must map channel indices to names, got {names!r}")
    channels: dict[str, int] = {}
    for index, name in names.items():
        modality = CHANNEL_SYNONYMS.get(_key(name))
        if not str(index).isdigit() or modality is None or modality in channels:
            why = ("not a channel index" if not str(index).isdigit() else
                   "appears twice" if modality in channels else
                   f"is none of {list(MODALITIES)} (synonyms: T1w/t1n, T1ce/t1c/T1gd, T2w/t2w, "
                   "FLAIR/t2f)")
            raise DataError(f"{path}: {key} {index!r}: {name!r} {why}")
        channels[modality] = int(index)
    missing = [m for m in MODALITIES if m not in channels]
    if missing:
        raise DataError(f"{path}: {key} {dict(names)} lacks {missing}")
    return channels


def _check_declared(path: Path, found: LabelConvention, labels: Mapping[Any, Any] | None,
                    regions: Mapping[str, Sequence[Any]] | None,
                    region_order: Sequence[str] | None, name: str | None) -> LabelConvention:
    """The YAML's declared convention when it agrees with ``found`` (read from dataset.json)."""
    if labels is None:
        if regions is None:
            return found
        unknown = sorted({int(v) for vs in regions.values() for v in vs} - set(found.values))
        if unknown:
            raise DataError(f"{path}: labels {dict(found.labels)} lack the values {unknown} of "
                            "data.regions")
        return convention_from_config(name or found.name, found.labels, regions, region_order)
    declared = convention_from_config(name or found.name, labels, regions or found.regions,
                                      region_order)
    if declared.values != found.values or declared.tissues != found.tissues:
        raise DataError(
            f"{path}: labels {dict(found.labels)} differ from data.labels {dict(declared.labels)}"
            " (fix data.labels, or set data.labels=null to take them from dataset.json)")
    return declared


def _nifti_files(folder: Path, ending: str | None = None) -> dict[str, Path]:
    """Case stem -> file for the NIfTI files of ``folder`` (hidden ``._`` files skipped)."""
    found = {}
    for child in sorted(folder.iterdir()):
        if ending is not None:
            stem = child.name[: -len(ending)] if (child.name.endswith(ending)
                                                  and not child.name.startswith(".")) else None
        else:
            stem = strip_extension(child.name)
        if stem and child.is_file():
            found[stem] = child
    return found


def _check_training_list(path: Path, root: Path, entries: Any) -> None:
    """Every image and label that MSD's ``training`` list names exists (DataError otherwise)."""
    if not isinstance(entries, list):
        raise DataError(f"{path}: training must be a list, got {type(entries).__name__}")
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise DataError(f"{path}: training entry {entry!r} is not an image/label object")
        for key in ("image", "label"):
            listed = entry.get(key)
            if listed is None or not (root / str(listed)).is_file():
                raise DataError(f"{path}: training names {key} {listed!r}, which does not "
                                f"exist under {root}")


class MSDFolder:
    """A Medical Segmentation Decathlon task folder (``data=msd_brain``).

    Args:
        images: the training images folder; ``labels``: its labels folder.
    """

    def __init__(self, images: str = "imagesTr", labels: str = "labelsTr") -> None:
        self.images = images
        self.labels = labels

    def convention(self, folder: Path, labels: Mapping[Any, Any] | None,
                   regions: Mapping[str, Sequence[Any]] | None,
                   region_order: Sequence[str] | None = None,
                   name: str | None = None) -> LabelConvention:
        """The YAML's convention, checked against ``dataset.json`` ``labels``.

        Raises:
            DataError: dataset.json unreadable, without ``labels``, or its labels differ
                (values or tissues) from ``data.labels``; ConfigError: malformed YAML keys.
        """
        root = _split_folder(Path(folder))[0]
        data = read_dataset_json(root, ["labels", "modality"])
        path = root / "dataset.json"
        try:
            found_labels = {int(v): str(n) for v, n in dict(data["labels"]).items()}
        except (TypeError, ValueError):
            raise DataError(f"{path}: labels must map values to names, got "
                            f"{data['labels']!r}") from None
        if not any(found_labels):
            raise DataError(f"{path}: labels {data['labels']!r} name no label besides background")
        found = convention_from_config(name or "msd_brain", found_labels,
                                       {str(n): [v] for v, n in found_labels.items() if v})
        return _check_declared(path, found, labels, regions, region_order, name)

    def find_cases(self, folder: str | Path, *, require_label: bool = True,
                   allow_missing: bool = False) -> list[CaseFiles]:
        """The cases of ``imagesTr`` (or of the images folder given), sorted by id.

        Raises:
            DataError: naming dataset.json (unreadable, ``modality`` not the four modalities,
                ``training`` naming a file that does not exist) or the case and file (missing
                label with ``require_label``); the folder (no case).
        """
        root, images, labels, training = _split_folder(Path(folder))
        if images == root / "imagesTr" and self.images != "imagesTr":
            images, labels = root / self.images, root / self.labels
        data = read_dataset_json(root, ["modality"])
        path = root / "dataset.json"
        channels = canonical_channels(path, "modality", data["modality"])
        if training and "training" in data:
            _check_training_list(path, root, data["training"])
        if not images.is_dir():
            raise DataError(f"{images}: images folder does not exist (dataset.json in {root})")
        cases = []
        for case_id, image in _nifti_files(images).items():
            label = None
            if labels is not None:
                label = next((labels / f"{case_id}{e}" for e in (".nii.gz", ".nii")
                              if (labels / f"{case_id}{e}").is_file()), None)
            if label is None and require_label:
                raise DataError(f"case {case_id}: missing file "
                                f"{(labels or root / self.labels) / f'{case_id}.nii.gz'}")
            cases.append(CaseFiles(case_id, dict.fromkeys(MODALITIES, image), label,
                                   channels=dict(channels), num_channels=len(data["modality"])))
        if not cases:
            raise DataError(f"{images}: no case found (expected <case>.nii.gz 4D volumes)")
        return cases


class NNUNetRawFolder:
    """An nnU-Net v2 raw data set folder (``data=nnunet_raw``), ``dataset.json`` read for all."""

    def convention(self, folder: Path, labels: Mapping[Any, Any] | None = None,
                   regions: Mapping[str, Sequence[Any]] | None = None,
                   region_order: Sequence[str] | None = None,
                   name: str | None = None) -> LabelConvention:
        """The convention of ``dataset.json`` (the YAML's ``labels``/``regions``, when not null,
        must agree with it).

        Region-based (a label maps to a list): each list is a region (``whole tumor`` etc.
        renamed WT, TC, ET); disk values are ``regions_class_order``, value i named after the
        region painted with it; ``region_order`` is the labels' order. Plain labels: each
        non-background label a region of its own (no union region: nnU-Net's evaluation
        scores labels only). ``ignore`` is a valid value but no region.

        Raises:
            DataError: naming dataset.json: unreadable, keys missing, labels malformed, or
                ``regions_class_order`` missing or of the wrong length.
        """
        root = _split_folder(Path(folder))[0]
        path = root / "dataset.json"
        data = read_dataset_json(root, ["labels", "channel_names"])
        raw = data["labels"]
        if not isinstance(raw, Mapping) or raw.get("background") != 0:
            raise DataError(f"{path}: labels must map names to values with background 0, got "
                            f"{raw!r}")
        title = name or f"nnunet_raw:{data.get('name') or root.name}"
        entries = [(str(k), v) for k, v in raw.items() if k != "background"]
        try:
            if any(isinstance(v, list | tuple) and len(v) > 1 for _, v in entries):
                order = data.get("regions_class_order")
                if not isinstance(order, list) or len(order) != len(entries):
                    raise DataError(f"{path}: region-based labels need regions_class_order with "
                                    f"{len(entries)} values, got {order!r}")
                names = [REGION_NAMES.get(_key(k), k) for k, _ in entries]
                painted = zip(order, names, strict=True)
                found_labels = {0: "background", **{int(v): n for v, n in painted}}
                found_regions = {n: [int(x) for x in (v if isinstance(v, list | tuple) else [v])]
                                 for n, (_, v) in zip(names, entries, strict=True)}
                found = convention_from_config(title, found_labels, found_regions, names)
            else:
                values = {int(v[0] if isinstance(v, list | tuple) else v): k for k, v in entries}
                found = convention_from_config(
                    title, {0: "background", **values},
                    {n: [v] for v, n in values.items() if _key(n) != "ignore"})
        except DataError:
            raise
        except Exception as error:  # noqa: BLE001 - any malformed value
            raise DataError(f"{path}: labels {raw!r} malformed ({error})") from None
        logger.debug("%s: convention %s (tissues %s)", path, found.name,
                     [tissue_of(n) for n in found.labels.values()])
        return _check_declared(path, found, labels, regions, region_order, name)

    def find_cases(self, folder: str | Path, *, require_label: bool = True,
                   allow_missing: bool = False) -> list[CaseFiles]:
        """The cases of ``imagesTr`` (or of the images folder given), sorted by id.

        Raises:
            DataError: naming dataset.json (unreadable, ``channel_names`` not the four
                modalities, ``numTraining`` not the number of cases found) or the case and file
                (a missing channel file unless ``allow_missing``, a channel index not in
                ``channel_names``, a missing label with ``require_label``); the folder (no case).
        """
        root, images, labels, training = _split_folder(Path(folder))
        data = read_dataset_json(root, ["channel_names", "labels"])
        path = root / "dataset.json"
        channels = canonical_channels(path, "channel_names", data["channel_names"])
        ending = str(data.get("file_ending", ".nii.gz"))
        if not images.is_dir():
            raise DataError(f"{images}: images folder does not exist (dataset.json in {root})")
        grouped: dict[str, dict[int, Path]] = {}
        for stem, file in _nifti_files(images, ending).items():
            match = re.fullmatch(r"(.+)_(\d{4})", stem)
            if match is None:
                logger.warning("%s: not <case>_<XXXX>%s; ignored", file, ending)
                continue
            index = int(match.group(2))
            if index not in channels.values():
                raise DataError(f"case {match.group(1)}: {file}: channel {index:04d} is not in "
                                f"channel_names of {path}")
            grouped.setdefault(match.group(1), {})[index] = file
        expected = data.get("numTraining")
        if training and expected is not None and int(expected) != len(grouped):
            raise DataError(f"{path}: numTraining is {expected} but {images} holds "
                            f"{len(grouped)} case(s)")
        cases = []
        for case_id in sorted(grouped):
            files = {}
            for modality, index in channels.items():
                file = grouped[case_id].get(index, images / f"{case_id}_{index:04d}{ending}")
                if index not in grouped[case_id] and not allow_missing:
                    raise DataError(f"case {case_id}: missing file {file}")
                files[modality] = file
            label = None if labels is None else labels / f"{case_id}{ending}"
            if label is not None and not label.is_file():
                label = None
            if label is None and require_label:
                raise DataError(f"case {case_id}: missing file "
                                f"{(labels or root / 'labelsTr') / f'{case_id}{ending}'}")
            cases.append(CaseFiles(case_id, {m: files[m] for m in MODALITIES}, label))
        if not cases:
            raise DataError(f"{images}: no case found (expected <case>_0000{ending} ... files)")
        return cases
