"""Write segmentations and probability maps as NIfTI on the grid of an input volume.

The output keeps the reference image's exact shape, affine and header geometry (qform and
sform with their codes, zooms, units, orientation); only the data type changes (uint8 for a
segmentation, float32 for probabilities) and the intensity scaling (``scl_slope`` /
``scl_inter``) is reset. Files are written atomically (``unet3d.runs.files.write_atomic_with``:
``<name>.tmp-<pid>`` in the same folder, then ``os.replace``); ``.nii.gz`` is gzip-compressed by
this module (a temporary name does not end
in ``.gz``, so nibabel's extension-based choice cannot be used). A job killed while writing a
case leaves only its temporary file, never a partial ``<case>.nii.gz``: a rerun into the same
folder writes that case (and removes the dead writer's temporary file). A full disk or a
read-only folder raises `~unet3d.errors.StorageError` naming the file; files written before are
intact.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.layouts.convention import BRATS2019
from unet3d.errors import DataError
from unet3d.runs.files import remove_stale_temporaries, write_atomic_with

logger = logging.getLogger(__name__)

#: gzip level of ``.nii.gz`` outputs (6: a good size/speed trade-off for label maps).
GZIP_LEVEL = 6


class OutputExistsError(DataError, FileExistsError):
    """The output file exists and overwriting was not asked for."""


def _output_header(reference_image: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """A copy of the reference's NIfTI header for data of ``shape`` and ``dtype``."""
    import nibabel as nib

    source = reference_image.header
    if isinstance(source, nib.Nifti1Header):
        header = source.copy()
    else:  # e.g. an Analyze or MGH image: start from a NIfTI header with its zooms
        header = nib.Nifti1Header()
        header.set_qform(reference_image.affine, code=1)
        header.set_sform(reference_image.affine, code=1)
        header.set_xyzt_units("mm", "sec")
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    zooms = tuple(float(z) for z in source.get_zooms()[:3])
    header.set_zooms(zooms + (1.0,) * (len(shape) - 3))
    header.set_slope_inter(None, None)  # no intensity scaling: the values are stored as is
    header["cal_min"] = 0.0
    header["cal_max"] = 0.0
    return header


def _nifti_image(data: np.ndarray, reference_image: Any) -> Any:
    """A Nifti1Image of ``data`` with the reference's affine and qform/sform (codes kept)."""
    import nibabel as nib

    header = _output_header(reference_image, data.shape, data.dtype)
    image = nib.Nifti1Image(data, reference_image.affine, header=header)
    source = reference_image.header
    if isinstance(source, nib.Nifti1Header):
        qform, qform_code = source.get_qform(coded=True)
        sform, sform_code = source.get_sform(coded=True)
        image.set_qform(
            qform if qform is not None else source.get_qform(), code=int(qform_code or 0)
        )
        image.set_sform(
            sform if sform is not None else source.get_sform(), code=int(sform_code or 0)
        )
    return image


def _exists_error(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{path}: output file exists; not overwritten (set predict.overwrite=true to replace it)")


def _write_atomic(image: Any, path: Path, overwrite: bool) -> Path:
    """Write ``image`` to ``path`` atomically (``unet3d.runs.files.write_atomic_with``).

    Temporary files of killed writers in the folder are removed first; the data is flushed to
    disk (``fsync``) before the file takes its name.
    """
    import nibabel as nib

    path = Path(path)
    name = path.name
    if not (name.endswith(".nii.gz") or name.endswith(".nii")):
        raise ValueError(f"{path}: output name must end in .nii.gz or .nii")
    if path.exists() and not overwrite:
        raise _exists_error(path)
    remove_stale_temporaries(path.parent, recursive=False)

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as raw:
            if name.endswith(".gz"):
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
                ) as stream:
                    image.to_file_map({"image": nib.FileHolder(fileobj=stream)})
            else:
                image.to_file_map({"image": nib.FileHolder(fileobj=raw)})
            raw.flush()
            os.fsync(raw.fileno())
        if path.exists() and not overwrite:  # appeared while we were writing
            raise _exists_error(path)

    return write_atomic_with(path, write)


def _check_grid(data: np.ndarray, reference_image: Any, what: str) -> None:
    reference_shape = tuple(int(side) for side in reference_image.shape[:3])
    if tuple(data.shape[:3]) != reference_shape:
        raise ValueError(
            f"{what} shape {tuple(data.shape[:3])} differs from the reference image's "
            f"{reference_shape}"
        )


def write_segmentation(
    labels: np.ndarray, reference_image: Any, path: str | Path, overwrite: bool = False,
    allowed: Sequence[int] = BRATS2019.values,
) -> Path:
    """Write a label volume as a uint8 NIfTI on the reference image's grid.

    Args:
        labels: (H, W, D) integer volume with label values in ``allowed``.
        reference_image: a nibabel image (one of the case's input modalities, or a
            ``Nifti1Image`` built from a stored affine): its shape, affine and header geometry
            are copied.
        path: output file (``.nii.gz`` or ``.nii``).
        overwrite: replace an existing file; otherwise raise ``OutputExistsError``.
        allowed: the data set's label values (``LabelConvention.values``; default BraTS
            2018-2021's {0, 1, 2, 4}).

    Returns:
        The path written.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false (the file is untouched).
        StorageError: the disk is full or the folder is read-only (no file is left at
            ``path``).
        ValueError: wrong rank or shape, or labels outside ``allowed``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (H, W, D), got shape {labels.shape}")
    _check_grid(labels, reference_image, "segmentation")
    values = np.unique(labels)
    allowed = [int(value) for value in allowed]
    unexpected = [int(value) for value in values if int(value) not in allowed]
    if unexpected:
        raise ValueError(f"labels {unexpected} outside the data set's labels {allowed}")
    data = np.ascontiguousarray(labels, dtype=np.uint8)
    written = _write_atomic(_nifti_image(data, reference_image), Path(path), overwrite)
    logger.debug("wrote segmentation %s", written)
    return written


def write_probabilities(
    probabilities: np.ndarray, reference_image: Any, path: str | Path, overwrite: bool = False
) -> Path:
    """Write per-class probabilities (H, W, D, K) as a 4D float32 NIfTI on the reference grid.

    The 4th axis holds the model's output channels: its training classes 0..K-1 (class k is
    label ``values[k]`` of the convention it was trained on; BraTS 2019 class 3 is label 4), or
    its evaluation regions with a region head. Raises like
    ``write_segmentation``.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4:
        raise ValueError(f"probabilities must be (H, W, D, K), got shape {probabilities.shape}")
    _check_grid(probabilities, reference_image, "probabilities")
    data = np.ascontiguousarray(probabilities, dtype=np.float32)
    image = _nifti_image(data, reference_image)
    image.header.set_intent("vector", (), name="probabilities")
    written = _write_atomic(image, Path(path), overwrite)
    logger.debug("wrote probabilities %s", written)
    return written


def reference_from_affine(affine: np.ndarray, shape: tuple[int, int, int]) -> Any:
    """A data-less reference image for a volume known only by its affine and shape.

    Used for preprocessed (held-out) cases, whose original NIfTI header is not stored: the
    qform and sform are set from ``affine`` with code 1 (scanner), zooms come from the affine,
    units are mm. Returns an object with ``affine``, ``header`` and ``shape`` like a nibabel
    image.
    """
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64).reshape(4, 4)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"affine is not a valid voxel-to-world matrix: {affine.tolist()}")
    shape = tuple(int(side) for side in shape)
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_xyzt_units("mm", "sec")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    return ShapedReference(affine=affine, header=header, shape=shape)


@dataclass(frozen=True)
class ShapedReference:
    """A reference grid without voxel data: ``affine`` (4, 4), NIfTI ``header``, ``shape``."""

    affine: np.ndarray
    header: Any
    shape: tuple[int, ...]
