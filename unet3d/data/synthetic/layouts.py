"""The folder layouts and label conventions that the synthetic generator writes.

One generated case (:class:`unet3d.data.synthetic.case.SyntheticCase`: four modalities in
``MODALITIES`` order, BraTS 2019 labels) is written in the layout of a public data set:

==============  ==============================================================  ================
layout          files                                                           labels on disk
==============  ==============================================================  ================
``flat``        ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``                 0, 1 NCR, 2 ED,
                (ids ``BraTS19_SYN_0001``)                                      4 ET
``brats2019``   the same under ``HGG/`` or ``LGG/``                             as ``flat``
``brats2021``   as ``flat``, ids ``BraTS2021_00000`` (BraTS 2021's names)         as ``flat``
``brats2023``   ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``                  0, 1 NETC,
                (ids ``BraTS-GLI-00000-000``)                                   2 SNFH, 3 ET
``brats2024_``  as ``brats2023`` (the resection cavities of                     as brats2023,
``post``        ``resection_fraction`` labelled)                                4 RC
``msd_brain``   ``imagesTr/BRATS_001.nii.gz`` one 4D volume (H, W, D, 4),       0, 1 edema,
                channels FLAIR, T1w, T1gd, T2w; ``labelsTr/BRATS_001.nii.gz``;  2 non-enhancing,
                ``imagesTs/`` (``num_test``); ``dataset.json``                  3 enhancing
``nnunet_raw``  ``imagesTr/<case>_{0000..0003}.nii.gz`` (T1, T1ce, T2, Flair),  as ``msd_brain``
                ``labelsTr/<case>.nii.gz``, ``imagesTs/`` (``num_test``),       (region-based
                ``dataset.json`` (ids ``BraTS2021_00000``)                      dataset.json)
==============  ==============================================================  ================

Sources: the BraTS 2019 and 2023 challenge pages (names, labels), the Medical Segmentation
Decathlon's Task01_BrainTumour ``dataset.json`` (channels, labels, file lists), and nnU-Net v2's
``nnunetv2/dataset_conversion/Dataset137_BraTS21.py`` (channel order T1, T1ce, T2, Flair; labels
ED -> 1, NCR -> 2, ET -> 3; region-based ``labels`` with ``regions_class_order`` [1, 2, 3]),
whose ``dataset.json`` is mirrored key for key (``generate_dataset_json``).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.config.vocabulary import SYNTHETIC_LAYOUTS
from unet3d.data.layouts.convention import MODALITIES
from unet3d.data.synthetic.case import SyntheticCase
from unet3d.runs.files import write_bytes_atomic

#: Every layout the generator writes (``data.synthetic.layout``; its one home is the config's
#: vocabulary).
LAYOUTS: tuple[str, ...] = SYNTHETIC_LAYOUTS
#: Layouts in BraTS 2023+ case folders (<case>/<case>-<suffix>.nii.gz).
BRATS2023_FOLDERS: tuple[str, ...] = ("brats2023", "brats2024_post")
#: Layouts with a test-image folder (``imagesTs/``, ``data.synthetic.num_test``).
TEST_FOLDER_LAYOUTS: tuple[str, ...] = ("msd_brain", "nnunet_raw")
#: Layouts described by a ``dataset.json`` at the top of the folder.
DATASET_JSON_LAYOUTS: tuple[str, ...] = ("msd_brain", "nnunet_raw")

#: Label value on disk -> name, per layout.
LAYOUT_LABELS: dict[str, dict[int, str]] = {
    "flat": {0: "background", 1: "NCR", 2: "ED", 4: "ET"},
    "brats2019": {0: "background", 1: "NCR", 2: "ED", 4: "ET"},
    "brats2021": {0: "background", 1: "NCR", 2: "ED", 4: "ET"},
    "brats2023": {0: "background", 1: "NETC", 2: "SNFH", 3: "ET"},
    "brats2024_post": {0: "background", 1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"},
    "msd_brain": {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    "nnunet_raw": {0: "background", 1: "edema", 2: "non-enhancing and necrosis",
                   3: "enhancing tumor"},
}
#: The generator's label (BraTS 2019 values 0..4; 5 the resection cavity) -> the layout's
#: value of the same tissue (the cavity is background where the layout has no RC label).
_LABEL_TABLES: dict[str, np.ndarray] = {
    "flat": np.array([0, 1, 2, 0, 4, 0], dtype=np.uint8),
    "brats2019": np.array([0, 1, 2, 0, 4, 0], dtype=np.uint8),
    "brats2021": np.array([0, 1, 2, 0, 4, 0], dtype=np.uint8),
    "brats2023": np.array([0, 1, 2, 0, 3, 0], dtype=np.uint8),
    "brats2024_post": np.array([0, 1, 2, 0, 3, 4], dtype=np.uint8),
    "msd_brain": np.array([0, 2, 1, 0, 3, 0], dtype=np.uint8),
    "nnunet_raw": np.array([0, 2, 1, 0, 3, 0], dtype=np.uint8),
}
#: Suffix of each modality's file in BraTS 2023+ (t1n native T1, t1c contrast, t2w, t2f FLAIR).
BRATS2023_SUFFIXES: dict[str, str] = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
#: Channels of the MSD 4D volume, as modalities (``dataset.json`` FLAIR, T1w, t1gd, T2w).
MSD_CHANNELS: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
#: Channels of the nnU-Net files ``_0000`` ... ``_0003``, as modalities (Dataset137 order).
NNUNET_CHANNELS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

_MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
_NNUNET_CHANNEL_NAMES = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
_NNUNET_LABELS: dict[str, Any] = {"background": 0, "whole tumor": [1, 2, 3],
                                  "tumor core": [2, 3], "enhancing tumor": [3]}
_DESCRIPTION = ("Synthetic brain-tumour cases generated by unet3d.data.synthetic (not patient "
                "data)")


def case_id_for(layout: str, index: int) -> str:
    """The id of the ``index``-th (0-based) case in ``layout``.

    ``flat``/``brats2019``: ``BraTS19_SYN_0001``; ``brats2023``: ``BraTS-GLI-00000-000``;
    ``msd_brain``: ``BRATS_001``; ``nnunet_raw`` and ``brats2021``: ``BraTS2021_00000`` (as
    BraTS 2021 and nnU-Net's Dataset137 name them).
    """
    if layout in BRATS2023_FOLDERS:
        return f"BraTS-GLI-{index:05d}-000"
    if layout == "msd_brain":
        return f"BRATS_{index + 1:03d}"
    if layout in ("nnunet_raw", "brats2021"):
        return f"BraTS2021_{index:05d}"
    return f"BraTS19_SYN_{index + 1:04d}"


def case_files(layout: str, case_id: str, grade: str, test: bool = False) -> list[Path]:
    """The files of one case relative to the data-set folder: image files, then the label file.

    A test case (``test=True``, ``imagesTs/``) has no label file.
    """
    if layout in ("flat", "brats2019", "brats2021"):
        folder = Path(grade, case_id) if layout == "brats2019" else Path(case_id)
        return [folder / f"{case_id}_{name}.nii.gz" for name in (*MODALITIES, "seg")]
    if layout in BRATS2023_FOLDERS:
        suffixes = [BRATS2023_SUFFIXES[name] for name in MODALITIES] + ["seg"]
        return [Path(case_id) / f"{case_id}-{suffix}.nii.gz" for suffix in suffixes]
    images = Path("imagesTs" if test else "imagesTr")
    if layout == "msd_brain":
        files = [images / f"{case_id}.nii.gz"]
    else:
        files = [images / f"{case_id}_{channel:04d}.nii.gz" for channel in range(4)]
    return files if test else [*files, Path("labelsTr") / f"{case_id}.nii.gz"]


def case_record(layout: str, case_id: str, grade: str, test: bool = False) -> Any:
    """What the manifest records of a case: its folder (BraTS layouts, as before) or files."""
    if layout in ("flat", "brats2019", "brats2021", *BRATS2023_FOLDERS):
        return str(case_files(layout, case_id, grade)[0].parent)
    return [str(path) for path in case_files(layout, case_id, grade, test)]


def layout_labels(layout: str, label: np.ndarray) -> np.ndarray:
    """BraTS 2019 labels (uint8, values 0, 1, 2, 4) -> the same tissues in ``layout``'s values."""
    return _LABEL_TABLES[layout][label]


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzip-compressed NIfTI-1 file (mm, qform and sform code 1, gzip mtime 0: reproducible)."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _channels(case: SyntheticCase, order: tuple[str, ...]) -> list[np.ndarray]:
    return [np.ascontiguousarray(case.image[..., MODALITIES.index(name)]) for name in order]


def write_case(layout: str, case: SyntheticCase, out_dir: Path, test: bool = False) -> None:
    """Write ``case`` into ``out_dir`` in ``layout``, each file atomically.

    Args:
        layout: one of ``LAYOUTS``.
        case: the generated case (image int16 (H, W, D, 4) in ``MODALITIES`` order, label uint8
            BraTS 2019 values).
        out_dir: the data-set folder.
        test: write only the images, into ``imagesTs/`` (``TEST_FOLDER_LAYOUTS``).
    """
    files = [out_dir / path for path in case_files(layout, case.case_id, case.grade, test)]
    if layout == "msd_brain":
        volumes = [np.stack(_channels(case, MSD_CHANNELS), axis=-1)]
    elif layout == "nnunet_raw":
        volumes = _channels(case, NNUNET_CHANNELS)
    else:
        volumes = _channels(case, MODALITIES)
    if not test:
        volumes.append(layout_labels(layout, case.label))
    for path, volume in zip(files, volumes, strict=True):
        write_bytes_atomic(path, nifti_bytes(volume, case.affine))


def dataset_json(layout: str, train_ids: list[str], test_ids: list[str]) -> dict[str, Any] | None:
    """The ``dataset.json`` of a ``msd_brain`` or ``nnunet_raw`` folder (None for the others).

    ``msd_brain``: the keys of Task01_BrainTumour's file (name, description, reference, licence,
    release, tensorImageSize, modality, labels, numTraining, numTest, training, test).
    ``nnunet_raw``: what nnU-Net's ``generate_dataset_json`` writes for Dataset137_BraTS2021
    (channel_names, labels with regions as lists, numTraining, file_ending, name, reference,
    description, regions_class_order).
    """
    if layout == "msd_brain":
        return {
            "name": "BRATS",
            "description": _DESCRIPTION,
            "reference": "unet3d.data.synthetic",
            "licence": "CC-BY-SA 4.0",
            "release": "synthetic",
            "tensorImageSize": "4D",
            "modality": dict(_MSD_MODALITY),
            "labels": {str(v): name for v, name in LAYOUT_LABELS["msd_brain"].items()},
            "numTraining": len(train_ids),
            "numTest": len(test_ids),
            "training": [{"image": f"./imagesTr/{case_id}.nii.gz",
                          "label": f"./labelsTr/{case_id}.nii.gz"} for case_id in train_ids],
            "test": [f"./imagesTs/{case_id}.nii.gz" for case_id in test_ids],
        }
    if layout == "nnunet_raw":
        return {
            "channel_names": dict(_NNUNET_CHANNEL_NAMES),
            "labels": {name: list(value) if isinstance(value, list) else value
                       for name, value in _NNUNET_LABELS.items()},
            "numTraining": len(train_ids),
            "file_ending": ".nii.gz",
            "name": "SyntheticBraTS",
            "reference": "unet3d.data.synthetic",
            "description": _DESCRIPTION,
            "regions_class_order": [1, 2, 3],
        }
    return None
