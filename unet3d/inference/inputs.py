"""The cases that evaluate and predict segment: raw data set folders or preprocessed records.

A ``PendingCase`` is a case found in the input, loaded only when its turn comes (one case's
volumes in memory at a time); loading gives an ``InputCase``: the normalised image, the
reference label when there is one, the voxel spacing and the grid to write the output on.
Raw cases are found and loaded by the data set's layout (``unet3d.data.layouts.resolve``: its
reader and label convention) and preprocessed exactly like training data (``preprocess_case`` then
``normalize``); records are read by the evaluate modes' reader (``iterate_eval_cases``) and
their training classes turned back into the data set's label values.
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
        label: uint8 labels ``(H, W, D)`` in the data set's values (BraTS 2019: {0, 1, 2, 4}),
            or None.
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


def input_layout(data_cfg: Any, input_dir: str | Path) -> Any:
    """The layout (reader and label convention) of the ``data`` group, for ``input_dir``.

    The data set itself is built only when the group names no ``reader`` (the synthetic data
    set takes its layout from ``data.synthetic.layout``); ``data.raw_dir`` is not needed.

    Raises:
        ConfigError: a bad ``data.reader`` / ``data.labels`` / ``data.regions``.
        DataError: the folder's metadata (``dataset.json``) is missing or disagrees.
    """
    from unet3d.data.datasets import build_dataset
    from unet3d.data.layouts.resolve import resolve_layout

    dataset = None if data_cfg.get("reader") is not None else build_dataset(data_cfg)
    return resolve_layout(data_cfg, dataset, Path(input_dir).expanduser())


def find_input_cases(input_dir: str | Path, layout: Any = None) -> list[Any]:
    """Cases under ``input_dir`` (in ``layout``, labels optional), sorted by id.

    A case with a missing modality is listed (and fails alone when loaded).

    Args:
        input_dir: the folder of the cases.
        layout: the data set's ``DataLayout``; None = BraTS 2019 case folders.

    Raises:
        DataError: the folder is missing, empty or holds no case.
    """
    from unet3d.data.layouts.resolve import default_layout

    layout = layout if layout is not None else default_layout()
    return layout.find_cases(Path(input_dir).expanduser(), require_label=False,
                             allow_missing=True)


def load_raw_case(case: Any, layout: Any = None) -> InputCase:
    """Load, preprocess (as for training) and normalise one raw case (``cases.CaseFiles``).

    A bad label file does not stop the case: it is segmented without a label and
    ``label_error`` says what is wrong.

    Args:
        case: the case's files.
        layout: the data set's ``DataLayout`` (its convention checks the label); None = BraTS
            2019.

    Raises:
        DataError: a modality is missing or unreadable (the message names case and file).
    """
    import nibabel as nib

    from unet3d.data.layouts.convention import MODALITIES
    from unet3d.data.layouts.resolve import default_layout
    from unet3d.data.preprocess import normalize, preprocess_case

    layout = layout if layout is not None else default_layout()
    loaded = layout.load_case(case, strict_label=False)
    record = preprocess_case(loaded, layout.convention)
    loaded.image = None  # free the float32 input before normalising
    image = normalize(record["image"], record["mean"], record["std"])
    del record
    path, _ = case.source(MODALITIES[0])
    reference = _grid_reference(nib.load(str(path)))  # header only, no voxels read
    return InputCase(case.case_id, image, loaded.label, tuple(loaded.spacing), reference,
                     label_error=loaded.label_error)


def _grid_reference(image: Any) -> Any:
    """The 3D grid to write on: a 4D image (MSD: every modality in one file) gives 3 axes."""
    if len(image.shape) <= 3:
        return image
    from unet3d.inference.nifti_writer import reference_from_affine

    return reference_from_affine(image.affine, tuple(int(side) for side in image.shape[:3]))


def load_record_case(path: str | Path, convention: Any = None) -> InputCase:
    """Read and normalise one preprocessed record; the output grid is its stored affine.

    A record that holds only the brain box (``crop_box``) is pasted back into its original grid
    (image 0 and label background outside the box), so that outputs and metrics are on the
    grid of the raw case.

    Args:
        path: the record.
        convention: the data set's ``LabelConvention`` (the record holds its training
            classes); None = BraTS 2019.

    Raises:
        DataError: the record is missing or corrupt (the message names case and file).
    """
    from unet3d.data.crop import paste_to_full
    from unet3d.data.layouts.convention import BRATS2019
    from unet3d.data.pipeline import iterate_eval_cases
    from unet3d.inference.nifti_writer import reference_from_affine

    record = next(iterate_eval_cases([str(path)]))
    image, classes = record.image, record.label
    if record.crop_box is not None and not record.crop_box.is_full:
        image = paste_to_full(image, record.crop_box, background_class=None)
        classes = None if classes is None else paste_to_full(classes, record.crop_box)
    shape = tuple(int(side) for side in record.full_shape)
    spacing = tuple(float(value) for value in record.spacing)
    try:
        reference = reference_from_affine(record.affine, shape)
    except ValueError:
        log.warning("case %s: %s stores no valid affine; writing with the voxel spacing %s",
                    record.case_id, path, spacing)
        reference = reference_from_affine(np.diag([*spacing, 1.0]), shape)
    convention = convention if convention is not None else BRATS2019
    label = convention.to_labels(classes) if classes is not None else None
    return InputCase(str(record.case_id), image, label, spacing, reference)


def raw_pending_cases(input_dir: str | Path, layout: Any = None) -> list[PendingCase]:
    """The raw cases of a folder in ``layout`` (None = BraTS 2019), loaded one at a time.

    Raises:
        DataError: the folder is missing, empty or holds no case.
    """
    return [
        PendingCase(case.case_id, str(case.folder),
                    (lambda case=case: load_raw_case(case, layout)))
        for case in find_input_cases(input_dir, layout)
    ]


def record_pending_cases(files: Sequence[str | Path], convention: Any = None
                         ) -> list[PendingCase]:
    """Preprocessed records (``<case_id>.tfrecord``), to be loaded one at a time.

    Args:
        files: the records.
        convention: the data set's ``LabelConvention``; None = BraTS 2019.
    """
    from unet3d.data.tfrecord import case_id_of

    return [
        PendingCase(case_id_of(path), str(path),
                    (lambda path=path: load_record_case(path, convention)))
        for path in files
    ]
