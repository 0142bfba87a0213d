"""Finding and loading BraTS cases (NIfTI) with clear errors for every kind of bad input."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.labels import BRATS_LABELS, MODALITIES
from unet3d.errors import DataError

logger = logging.getLogger(__name__)

#: File-name suffix of the segmentation.
LABEL_NAME = "seg"
_EXTENSIONS = (".nii.gz", ".nii")
_GRADE_FOLDERS = ("HGG", "LGG")
#: Absolute tolerance when comparing the affines of a case's volumes (mm).
AFFINE_TOLERANCE = 1e-3


@dataclass
class CaseFiles:
    """The NIfTI files of one case: one per modality (MODALITIES order) and the label."""

    case_id: str
    modalities: dict[str, Path]
    label: Path | None


@dataclass
class LoadedCase:
    """A loaded case: image float32 (H, W, D, 4) in MODALITIES order, label uint8 BraTS labels.

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


def _find_volume(case_dir: Path, case_id: str, name: str) -> Path | None:
    """Return ``<case>_<name>.nii[.gz]`` in ``case_dir`` (or the only ``*_<name>.nii[.gz]``)."""
    for extension in _EXTENSIONS:
        candidate = case_dir / f"{case_id}_{name}{extension}"
        if candidate.is_file():
            return candidate
    for extension in _EXTENSIONS:
        matches = sorted(case_dir.glob(f"*_{name}{extension}"))
        if len(matches) == 1:
            return matches[0]
    return None


def _looks_like_case(folder: Path) -> bool:
    suffixes = tuple(f"_{name}{ext}" for name in (*MODALITIES, LABEL_NAME) for ext in _EXTENSIONS)
    try:
        return any(child.name.endswith(suffixes) for child in folder.iterdir())
    except OSError:
        return False


def _case_folders(raw_dir: Path) -> list[Path]:
    children = sorted(child for child in raw_dir.iterdir() if child.is_dir())
    folders: list[Path] = []
    for child in children:
        if child.name.upper() in _GRADE_FOLDERS and not _looks_like_case(child):
            folders.extend(sorted(c for c in child.iterdir() if c.is_dir()))
        else:
            folders.append(child)
    return folders


def find_cases(raw_dir: str | Path, require_label: bool = True,
               allow_missing: bool = False) -> list[CaseFiles]:
    """List the cases under ``raw_dir`` (a flat folder of case folders, or HGG/ and LGG/).

    Each case folder ``<case>`` holds ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (``.nii`` also
    accepted). Returns the cases sorted by id. Raises DataError naming the folder when it does
    not exist, is empty or has no case folder, and naming the case and file when a modality (or,
    with ``require_label``, the segmentation) is missing. With ``allow_missing`` a missing
    modality keeps its expected path instead, so that ``load_case`` fails for that case alone
    (prediction goes on with the other cases).
    """
    raw_dir = Path(raw_dir).expanduser()
    if not raw_dir.exists():
        raise DataError(f"{raw_dir}: data folder does not exist")
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: is not a folder")
    if not any(raw_dir.iterdir()):
        raise DataError(f"{raw_dir}: data folder is empty")

    cases: dict[str, CaseFiles] = {}
    ignored: list[str] = []
    for folder in _case_folders(raw_dir):
        if not _looks_like_case(folder):
            ignored.append(folder.name)
            continue
        case_id = folder.name
        modalities: dict[str, Path] = {}
        for name in MODALITIES:
            path = _find_volume(folder, case_id, name)
            if path is None and allow_missing:
                path = folder / f"{case_id}_{name}.nii.gz"
            elif path is None:
                raise DataError(
                    f"case {case_id}: missing file {folder / f'{case_id}_{name}.nii.gz'}"
                )
            modalities[name] = path
        label = _find_volume(folder, case_id, LABEL_NAME)
        if label is None and require_label:
            raise DataError(
                f"case {case_id}: missing file {folder / f'{case_id}_{LABEL_NAME}.nii.gz'}"
            )
        if case_id in cases:
            raise DataError(
                f"case {case_id}: found twice under {raw_dir} "
                f"({cases[case_id].modalities['t1'].parent} and {folder})"
            )
        cases[case_id] = CaseFiles(case_id=case_id, modalities=modalities, label=label)

    if not cases:
        raise DataError(
            f"{raw_dir}: no BraTS case found (expected <case>/<case>_t1.nii.gz, _t1ce, _t2, "
            "_flair and _seg files, in case folders or under HGG/ and LGG/)"
        )
    if ignored:
        logger.warning(
            "Ignored %d folder(s) without NIfTI volumes under %s: %s",
            len(ignored),
            raw_dir,
            ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""),
        )
    return [cases[case_id] for case_id in sorted(cases)]


def _read_volume(case_id: str, path: Path) -> tuple[np.ndarray, Any]:
    """Load one NIfTI volume; return (array, image) or raise DataError naming case and file."""
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"case {case_id}: {path}: file does not exist")
    try:
        image = nib.load(str(path))
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"case {case_id}: {path}: not a NIfTI image ({type(image).__name__})")
        array = np.asanyarray(image.dataobj)
    except DataError:
        raise
    except EOFError as error:
        raise DataError(f"case {case_id}: {path}: truncated file ({error})") from error
    except Exception as error:  # nibabel, gzip and zlib raise many types on bad input
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        kind = "truncated file" if reason.startswith("Expected") else "unreadable NIfTI file"
        raise DataError(f"case {case_id}: {path}: {kind} ({reason})") from error
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(
            f"case {case_id}: {path}: expected a 3D volume, got shape {tuple(array.shape)}"
        )
    return array, image


def load_case(case: CaseFiles, *, strict_label: bool = True) -> LoadedCase:
    """Load a case's four modalities (float32, channels last) and its label (uint8).

    Returns a LoadedCase with ``image`` float32 (H, W, D, 4) in MODALITIES order and ``label``
    uint8 (H, W, D) holding BraTS labels {0, 1, 2, 4} (None when the case has no label file).

    Raises DataError naming the case and the file for: a missing, unreadable, truncated or
    non-NIfTI file, a volume that is not 3D, shapes or affines that differ between the
    volumes, NaN or infinite voxels, non-integer label values and label values outside
    {0, 1, 2, 4}. With ``strict_label=False`` (prediction, where the label only serves for
    scoring) a bad label file raises nothing: ``label`` is None and ``label_error`` holds the
    message; errors of the modalities still raise.
    """
    case_id = case.case_id
    image: np.ndarray | None = None
    reference_affine: np.ndarray | None = None
    reference_path: Path | None = None
    header = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    for channel, name in enumerate(MODALITIES):
        path = Path(case.modalities[name])
        array, nifti = _read_volume(case_id, path)
        affine = np.asarray(nifti.affine, dtype=np.float64)
        if image is None:
            image = np.empty(array.shape + (len(MODALITIES),), dtype=np.float32)
            reference_affine, reference_path, header = affine, path, nifti.header
            spacing = tuple(float(z) for z in nifti.header.get_zooms()[:3])
        else:
            _check_same_grid(
                case_id,
                path,
                array.shape,
                affine,
                image.shape[:3],
                reference_affine,
                reference_path,
            )
        image[..., channel] = array
        if np.issubdtype(array.dtype, np.inexact):
            # NaN/Inf on disk, or float64 values that overflow float32.
            finite = np.isfinite(image[..., channel])
            if not finite.all():
                bad = int(finite.size - np.count_nonzero(finite))
                raise DataError(f"case {case_id}: {path}: {bad} NaN or infinite voxel(s)")

    label = None
    label_error = None
    if case.label is not None:
        path = Path(case.label)
        try:
            array, nifti = _read_volume(case_id, path)
            _check_same_grid(
                case_id,
                path,
                array.shape,
                np.asarray(nifti.affine),
                image.shape[:3],
                reference_affine,
                reference_path,
            )
            label = _to_label(case_id, path, array, nifti)
        except DataError as error:
            if strict_label:
                raise
            label_error = str(error).strip().splitlines()[0] if str(error).strip() else (
                f"case {case_id}: {path}: unusable label file"
            )
    return LoadedCase(
        case_id=case_id,
        image=image,
        label=label,
        affine=reference_affine,
        header=header,
        spacing=spacing,
        label_error=label_error,
    )


def _check_same_grid(
    case_id: str,
    path: Path,
    shape: tuple[int, ...],
    affine: np.ndarray,
    reference_shape: tuple[int, ...],
    reference_affine: np.ndarray,
    reference_path: Path,
) -> None:
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


def _to_label(case_id: str, path: Path, array: np.ndarray, nifti: Any = None) -> np.ndarray:
    """Check a label volume and return it as uint8 BraTS labels (same shape).

    ``nifti`` (the nibabel image the array came from) only serves to name a header scaling in
    the message. Raises DataError naming the case and the file for NaN or infinite voxels,
    non-integer values (a few of them listed) and values outside {0, 1, 2, 4}.
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
    invalid = (array < 0) | (array > max(BRATS_LABELS))
    for value in range(max(BRATS_LABELS)):
        if value not in BRATS_LABELS:
            invalid |= array == value
    if invalid.any():
        unexpected = [v.item() for v in np.unique(array[invalid])][:10]
        raise DataError(
            f"case {case_id}: {path}: label values {unexpected} outside {list(BRATS_LABELS)}"
        )
    return array.astype(np.uint8)
