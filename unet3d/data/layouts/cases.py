"""Loading one case's NIfTI files (any layout) with clear errors for every kind of bad input.

The layout readers (``unet3d.data.readers``) find a case's files; ``load_case`` reads them into
an image float32 (H, W, D, 4) in ``MODALITIES`` order and a label of disk values checked
against the data set's ``LabelConvention``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.layouts.convention import BRATS2019, MODALITIES, LabelConvention
from unet3d.errors import DataError

logger = logging.getLogger(__name__)

#: Absolute tolerance when comparing the affines of a case's volumes (mm).
AFFINE_TOLERANCE = 1e-3


@dataclass
class CaseFiles:
    """The NIfTI files of one case.

    Attributes:
        case_id: the case's id.
        modalities: canonical modality (``MODALITIES``) -> its file. Several modalities may
            share one 4D file (MSD), which is then read once.
        label: the segmentation file, or None (a test set).
        channels: canonical modality -> channel index in its (4D) file; absent or None: the
            file is a 3D volume.
        num_channels: the number of channels every 4D file must hold (None: not checked).
    """

    case_id: str
    modalities: dict[str, Path]
    label: Path | None
    channels: dict[str, int | None] = field(default_factory=dict)
    num_channels: int | None = None

    def source(self, modality: str) -> tuple[Path, int | None]:
        """``(path, channel index or None)`` of one canonical modality."""
        return Path(self.modalities[modality]), self.channels.get(modality)

    @property
    def folder(self) -> Path:
        """The folder of the case's first modality (named in listings)."""
        return Path(self.modalities[MODALITIES[0]]).parent


@dataclass
class LoadedCase:
    """A loaded case: image float32 (H, W, D, 4) in MODALITIES order, label uint8 disk values.

    ``label_error`` is set only by ``load_case(..., strict_label=False)``: the one-line DataError
    message of an unusable label file (``label`` is then None).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    header: Any
    spacing: tuple[float, float, float]
    label_error: str | None = None


def read_volume(case_id: str, path: Path, channels: int | None = None) -> tuple[np.ndarray, Any]:
    """Load one NIfTI volume; return (array, nibabel image) or raise DataError naming the file.

    Args:
        case_id: named in errors.
        path: the file.
        channels: None: a 3D volume (trailing axes of size 1 dropped); an int C: a 4D volume
            (H, W, D, C) with exactly C channels.
    """
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"case {case_id}: {path}: file does not exist")
    try:
        image = nib.load(str(path))
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"case {case_id}: {path}: not a NIfTI image ({type(image).__name__})")
        if 0 in image.shape:
            raise DataError(f"case {case_id}: {path}: empty volume: shape {image.shape} holds "
                            "no voxel")
        array = np.asanyarray(image.dataobj)
    except DataError:
        raise
    except EOFError as error:
        raise DataError(f"case {case_id}: {path}: truncated file ({error})") from error
    except Exception as error:  # nibabel, gzip and zlib raise many types on bad input
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        kind = "truncated file" if reason.startswith("Expected") else "unreadable NIfTI file"
        sizes = re.match(r"Expected (\d+) bytes, got (\d+) bytes", reason)
        if sizes:  # nibabel's "Expected N bytes, got M bytes from <file name>"
            reason = (f"its header declares {sizes[1]} bytes of voxels, the file holds "
                      f"{sizes[2]}")
        broken = _broken_gzip(path)
        if broken is not None:  # nibabel only says "Cannot work out file type of ..."
            kind, reason = "truncated or corrupt gzip file", broken
        raise DataError(f"case {case_id}: {path}: {kind} ({reason})") from error
    if channels is not None:
        while array.ndim > 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 4 or array.shape[-1] != channels:
            raise DataError(
                f"case {case_id}: {path}: expected a 4D volume with {channels} channels "
                f"(H, W, D, {channels}), got shape {tuple(array.shape)}")
        return array, image
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(
            f"case {case_id}: {path}: expected a 3D volume, got shape {tuple(array.shape)}"
        )
    return array, image


def _broken_gzip(path: Path) -> str | None:
    """Why the gzip stream of ``path`` is unreadable (read to its end in 1 MiB pieces); None
    when it reads whole (or ``path`` is not gzip). Called only once nibabel gave up."""
    import gzip
    import zlib

    with path.open("rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            return None
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while piece := stream.read(1 << 20):
                total += len(piece)
    except (EOFError, OSError, zlib.error) as error:
        return str(error) or type(error).__name__
    if total < 348:
        return f"it holds {total} bytes, less than a NIfTI header (348)"
    return None


def load_case(case: CaseFiles, *, strict_label: bool = True,
              convention: LabelConvention = BRATS2019) -> LoadedCase:
    """Load a case's four modalities (float32, channels last) and its label (uint8).

    Args:
        case: the case's files (a 4D file shared by several modalities is read once).
        strict_label: False (prediction, where the label only serves for scoring): a bad label
            file raises nothing; ``label`` is then None and ``label_error`` holds the message.
        convention: the data set's labels; label values outside ``convention.values`` are an
            error (default: BraTS 2019, {0, 1, 2, 4}).

    Returns:
        A LoadedCase: ``image`` float32 (H, W, D, 4) in MODALITIES order, ``label`` uint8
        (H, W, D) disk label values (None without a label file), the first modality's affine
        (float64 (4, 4)), header and voxel spacing (mm).

    Raises:
        DataError: one line naming the case and the file: a missing, unreadable, truncated or
            non-NIfTI file, a volume that is not 3D (or a 4D file with the wrong number of
            channels), shapes or affines that differ between the volumes, NaN or infinite
            voxels, non-integer label values and label values outside the convention.
    """
    case_id = case.case_id
    image: np.ndarray | None = None
    reference_affine: np.ndarray | None = None
    reference_path: Path | None = None
    header = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    cache: dict[Path, tuple[np.ndarray, Any]] = {}
    for channel, name in enumerate(MODALITIES):
        path, index = case.source(name)
        if index is None:
            array, nifti = read_volume(case_id, path)
        else:
            if path not in cache:
                cache.clear()  # one 4D file in memory at a time
                cache[path] = read_volume(case_id, path, case.num_channels or index + 1)
            volumes, nifti = cache[path]
            if index >= volumes.shape[-1]:
                raise DataError(f"case {case_id}: {path}: no channel {index} for {name} "
                                f"(shape {tuple(volumes.shape)})")
            array = volumes[..., index]
        affine = np.asarray(nifti.affine, dtype=np.float64)
        if image is None:
            image = np.empty(array.shape + (len(MODALITIES),), dtype=np.float32)
            reference_affine, reference_path, header = affine, path, nifti.header
            spacing = tuple(float(z) for z in nifti.header.get_zooms()[:3])
        else:
            _check_same_grid(case_id, path, array.shape, affine, image.shape[:3],
                             reference_affine, reference_path)
        image[..., channel] = array
        if np.issubdtype(array.dtype, np.inexact):
            # NaN/Inf on disk, or float64 values that overflow float32.
            finite = np.isfinite(image[..., channel])
            if not finite.all():
                bad = int(finite.size - np.count_nonzero(finite))
                where = "" if index is None else f" (channel {index}, {name})"
                raise DataError(f"case {case_id}: {path}{where}: {bad} NaN or infinite voxel(s)")
    cache.clear()

    label = None
    label_error = None
    if case.label is not None:
        path = Path(case.label)
        try:
            array, nifti = read_volume(case_id, path)
            _check_same_grid(case_id, path, array.shape, np.asarray(nifti.affine),
                             image.shape[:3], reference_affine, reference_path)
            label = check_label(case_id, path, array, convention, nifti)
        except DataError as error:
            if strict_label:
                raise
            label_error = str(error).strip().splitlines()[0] if str(error).strip() else (
                f"case {case_id}: {path}: unusable label file"
            )
    return LoadedCase(case_id=case_id, image=image, label=label, affine=reference_affine,
                      header=header, spacing=spacing, label_error=label_error)


def _check_same_grid(case_id: str, path: Path, shape: tuple[int, ...], affine: np.ndarray,
                     reference_shape: tuple[int, ...], reference_affine: np.ndarray,
                     reference_path: Path) -> None:
    if tuple(shape) != tuple(reference_shape):
        raise DataError(
            f"case {case_id}: {path}: shape {tuple(shape)} differs from {tuple(reference_shape)} "
            f"of {reference_path.name}"
        )
    if not np.allclose(affine, reference_affine, atol=AFFINE_TOLERANCE, rtol=0.0):
        raise DataError(
            f"case {case_id}: {path}: affine differs from that of {reference_path.name} "
            f"(max difference {np.abs(affine - reference_affine).max():.4g})"
        )


def _format_number(value: np.floating) -> str:
    """Shortest text that reads back as ``value`` in its dtype (``3.9999998``, ``1.0000001``)."""
    if value == 0 or 1e-4 <= abs(value) < 1e16:
        return np.format_float_positional(value, trim="-")
    return np.format_float_scientific(value, trim="-")


def _header_scaling(nifti: Any) -> str:
    """`` (header scl_slope S / scl_inter I scales the stored ...)`` or '' without scaling."""
    dataobj = getattr(nifti, "dataobj", None)
    slope = getattr(dataobj, "slope", 1.0)
    inter = getattr(dataobj, "inter", 0.0)
    try:
        slope, inter = float(slope), float(inter)
    except (TypeError, ValueError):
        return ""
    slope = 1.0 if not np.isfinite(slope) or slope == 0 else slope  # NIfTI: 0 or NaN = none
    inter = 0.0 if not np.isfinite(inter) else inter
    if slope == 1.0 and inter == 0.0:
        return ""
    stored = np.dtype(nifti.get_data_dtype())
    what = "stored integers" if np.issubdtype(stored, np.integer) else f"stored {stored} values"
    # The header holds float32: print the value as written there (1.0000001, not 1.00000012).
    return (
        f"; header scl_slope {_format_number(np.float32(slope))} / scl_inter "
        f"{_format_number(np.float32(inter))} scales the {what} (store the label without "
        "scaling: scl_slope 1, scl_inter 0)"
    )


def check_label(case_id: str, path: Path, array: np.ndarray,
                convention: LabelConvention = BRATS2019, nifti: Any = None) -> np.ndarray:
    """Check a label volume and return it as uint8 disk label values (same shape).

    ``nifti`` (the nibabel image the array came from) only serves to name a header scaling in
    the message. Raises DataError naming the case and the file for NaN or infinite voxels,
    non-integer values (a few of them listed) and values outside ``convention.values``.
    """
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError(f"case {case_id}: {path}: NaN or infinite label voxel(s)")
        rounded = np.rint(array)
        fractional = rounded != array
        if fractional.any():
            values = np.unique(array[fractional])
            shown = ", ".join(_format_number(value) for value in values[:5])
            more = f", ... ({values.size} distinct)" if values.size > 5 else ""
            scaling = _header_scaling(nifti) if nifti is not None else ""
            raise DataError(
                f"case {case_id}: {path}: non-integer label values in "
                f"{int(np.count_nonzero(fractional))} voxel(s): {shown}{more}{scaling}"
            )
        array = rounded
    unexpected = convention.invalid_values(array)
    if unexpected:
        raise DataError(
            f"case {case_id}: {path}: label values {unexpected} outside "
            f"{list(convention.values)}"
        )
    return array.astype(np.uint8)
