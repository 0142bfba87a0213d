"""Where ``mode=predict`` writes each case: BraTS-ready NIfTI files in one output folder.

``<case_id>.nii.gz`` (uint8, labels {0, 1, 2, 4}, the input's grid) and, when asked for,
``<case_id>_probabilities.nii.gz`` (float32, one channel per class). A case id that would
escape the folder is refused; existing files are kept unless overwriting is asked for.
``NiftiOutputs`` is the ``outputs`` of the per-case loop (``unet3d.inference.case_loop``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from unet3d.errors import DataError, Unet3dError
from unet3d.inference.inputs import InputCase

log = logging.getLogger(__name__)

#: Suffix of segmentation outputs and of probability outputs.
SEGMENTATION_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"


def safe_output_path(output_dir: Path, case_id: str, suffix: str) -> Path:
    """``<output_dir>/<case_id><suffix>``, refusing ids that would escape the folder.

    Rejected: empty ids, ``.`` and ``..``, path separators (``/`` and ``\\``), absolute
    paths, drive letters and control characters.

    Raises:
        DataError: the id is unsafe (the message names the case and the reason).
    """
    reason = None
    if not isinstance(case_id, str) or not case_id.strip():
        reason = "empty case id"
    elif "/" in case_id or "\\" in case_id:
        reason = "contains a path separator"
    elif case_id in (".", ".."):
        reason = "is '.' or '..'"
    elif Path(case_id).is_absolute() or ":" in case_id:
        reason = "is an absolute path or names a drive"
    elif any(ord(character) < 32 for character in case_id):
        reason = "contains control characters"
    if reason is None:
        folder = Path(output_dir).resolve()
        path = (folder / f"{case_id}{suffix}").resolve()
        if path.parent != folder:
            reason = "resolves outside the output folder"
    if reason is not None:
        raise DataError(
            f"case {case_id!r}: unsafe case id ({reason}); it would escape the output folder "
            f"{output_dir}"
        )
    return Path(output_dir) / f"{case_id}{suffix}"


class NiftiOutputs:
    """Writes each case's segmentation (and probabilities) into ``folder``.

    Args:
        folder: the output folder (created by the caller).
        save_probabilities: also write ``<case_id>_probabilities.nii.gz``.
        overwrite: replace existing files; otherwise a case whose outputs exist fails with
            ``OutputExistsError`` before it is loaded.
        label_values: the label values segmentations may hold (the data set's convention);
            None: BraTS 2018-2021's {0, 1, 2, 4}.
    """

    def __init__(self, folder: Path, save_probabilities: bool = False,
                 overwrite: bool = False, label_values: Sequence[int] | None = None) -> None:
        self.folder = Path(folder)
        self.label_values = tuple(label_values) if label_values is not None else None
        self.save_probabilities = bool(save_probabilities)
        self.overwrite = bool(overwrite)

    def paths(self, case_id: str) -> tuple[Path, Path]:
        """The segmentation and probabilities paths of a case (DataError when unsafe)."""
        return (safe_output_path(self.folder, case_id, SEGMENTATION_SUFFIX),
                safe_output_path(self.folder, case_id, PROBABILITIES_SUFFIX))

    def check(self, case_id: str) -> None:
        """Refuse an unsafe id, and existing outputs unless overwriting.

        Raises:
            DataError: unsafe id; ``OutputExistsError`` (a DataError): an output exists.
        """
        from unet3d.inference.nifti_writer import OutputExistsError

        segmentation, probabilities = self.paths(case_id)
        targets = [segmentation] + ([probabilities] if self.save_probabilities else [])
        if self.overwrite:
            return
        for path in targets:
            if path.exists():
                raise OutputExistsError(
                    f"case {case_id}: {path}: output file exists; not overwritten "
                    "(set predict.overwrite=true to replace it)"
                )

    def write_probabilities(self, case: InputCase, probabilities: np.ndarray) -> None:
        """Write float32 ``(H, W, D, K)`` probabilities when asked for (atomically).

        Raises:
            DataError: the file cannot be written (names the case and the file).
        """
        if not self.save_probabilities:
            return
        from unet3d.inference.nifti_writer import write_probabilities

        path = self.paths(case.case_id)[1]
        with _write_errors(case.case_id, path):
            write_probabilities(probabilities, case.reference, path, self.overwrite)

    def write_segmentation(self, case: InputCase, labels: np.ndarray) -> None:
        """Write uint8 labels ``(H, W, D)`` (the data set's values) on the case's grid.

        Raises:
            DataError: the file cannot be written (names the case and the file).
        """
        from unet3d.inference.nifti_writer import write_segmentation

        path = self.paths(case.case_id)[0]
        with _write_errors(case.case_id, path):
            if self.label_values is None:
                write_segmentation(labels, case.reference, path, self.overwrite)
            else:
                write_segmentation(labels, case.reference, path, self.overwrite,
                                   allowed=self.label_values)


@contextmanager
def _write_errors(case_id: str, path: Path) -> Iterator[None]:
    """Turn an OSError of a write into a DataError naming the case and the file."""
    try:
        yield
    except OSError as error:
        if isinstance(error, Unet3dError):
            raise
        raise DataError(
            f"case {case_id}: {error.filename or path}: cannot write ({error.strerror or error})"
        ) from error
