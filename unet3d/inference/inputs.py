"""The cases that evaluate and predict segment: raw BraTS folders or preprocessed records.

A ``PendingCase`` is a case found in the input, loaded only when its turn comes (one case's
volumes in memory at a time); loading gives an ``InputCase``: the normalised image, the
reference label when there is one, the voxel spacing and the grid to write the output on.
Raw cases are preprocessed exactly like training data (``preprocess_case`` then ``normalize``);
records are read by the evaluate modes' reader (``iterate_eval_cases``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class InputCase:
    """One volume to segment: a normalised image and what is needed to write and score it.

    Attributes:
        case_id: the case's id.
        image: float32 ``(H, W, D, C)`` normalised as for training (None once segmented).
        label: uint8 BraTS labels ``(H, W, D)`` in {0, 1, 2, 4}, or None.
        spacing: voxel sides in mm.
        reference: nibabel image (or ``ShapedReference``) giving the output grid.
        label_error: why the reference label is unusable (then ``label`` is None).
    """

    case_id: str
    image: np.ndarray | None
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    reference: Any
    label_error: str | None = None


@dataclass
class PendingCase:
    """A case found in the input: its id, its file or folder, and how to load it."""

    case_id: str
    source: str
    load: Callable[[], InputCase]


def find_input_cases(input_dir: str | Path) -> list[Any]:
    """Cases under ``input_dir`` (BraTS layout, ``seg`` optional), sorted by id.

    A case with a missing modality is listed (and fails alone when loaded).

    Raises:
        DataError: the folder is missing, empty or holds no case.
    """
    from unet3d.data.brats import find_cases

    return find_cases(Path(input_dir).expanduser(), require_label=False, allow_missing=True)


def load_raw_case(case: Any) -> InputCase:
    """Load, preprocess (as for training) and normalise one raw case (``brats.CaseFiles``).

    A bad label file does not stop the case: it is segmented without a label and
    ``label_error`` says what is wrong.

    Raises:
        DataError: a modality is missing or unreadable (the message names case and file).
    """
    import nibabel as nib

    from unet3d.data.brats import load_case
    from unet3d.data.labels import MODALITIES
    from unet3d.data.preprocess import normalize, preprocess_case

    loaded = load_case(case, strict_label=False)
    record = preprocess_case(loaded)
    loaded.image = None  # free the float32 input before normalising
    image = normalize(record["image"], record["mean"], record["std"])
    del record
    reference = nib.load(str(case.modalities[MODALITIES[0]]))  # header only, no voxels read
    return InputCase(case.case_id, image, loaded.label, tuple(loaded.spacing), reference,
                     label_error=loaded.label_error)


def load_record_case(path: str | Path) -> InputCase:
    """Read and normalise one preprocessed record; the output grid is its stored affine.

    Raises:
        DataError: the record is missing or corrupt (the message names case and file).
    """
    from unet3d.data.labels import to_brats_labels
    from unet3d.data.pipeline import iterate_eval_cases
    from unet3d.inference.nifti_writer import reference_from_affine

    record = next(iterate_eval_cases([str(path)]))
    shape = tuple(int(side) for side in record.image.shape[:3])
    spacing = tuple(float(value) for value in record.spacing)
    try:
        reference = reference_from_affine(record.affine, shape)
    except ValueError:
        log.warning("case %s: %s stores no valid affine; writing with the voxel spacing %s",
                    record.case_id, path, spacing)
        reference = reference_from_affine(np.diag([*spacing, 1.0]), shape)
    label = to_brats_labels(record.label) if record.label is not None else None
    return InputCase(str(record.case_id), record.image, label, spacing, reference)


def raw_pending_cases(input_dir: str | Path) -> list[PendingCase]:
    """The raw cases of a BraTS-layout folder, to be loaded one at a time.

    Raises:
        DataError: the folder is missing, empty or holds no case.
    """
    return [
        PendingCase(case.case_id, str(Path(case.modalities["t1"]).parent),
                    (lambda case=case: load_raw_case(case)))
        for case in find_input_cases(input_dir)
    ]


def record_pending_cases(files: Sequence[str | Path]) -> list[PendingCase]:
    """Preprocessed records (``<case_id>.tfrecord``), to be loaded one at a time."""
    from unet3d.data.tfrecord import case_id_of

    return [
        PendingCase(case_id_of(path), str(path), (lambda path=path: load_record_case(path)))
        for path in files
    ]
