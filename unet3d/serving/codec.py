"""The request and response of the served model (``POST /invocations`` of ``mlflow models serve``).

Request (JSON)::

    {"dataframe_records": [{"case_id": "case_001",
                            "t1": "<base64 of case_001_t1.nii.gz>", "t1ce": "...",
                            "t2": "...", "flair": "..."}]}

one row per case; each modality column is a base64-encoded NIfTI file (``.nii.gz`` or
``.nii``), all on one grid; ``case_id`` is optional (default ``case_<row>``; letters, digits,
``_``, ``-``, ``.``). Response: ``{"predictions": [{"case_id": ..., "segmentation": "<base64 of
<case_id>.nii.gz>"}]}``: uint8 labels in the data set's label convention (BraTS 2019: 0, 1, 2,
4) on the input's grid and affine, exactly the file ``mode=predict`` writes. A malformed
request (missing column, bad base64, not NIfTI) is answered with HTTP 400 and one line naming
the case and the column (``MlflowException`` INVALID_PARAMETER_VALUE).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Input columns: one base64 NIfTI per modality, in the model's channel order.
MODALITY_COLUMNS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
CASE_COLUMN = "case_id"
#: Output column: the base64 of the ``<case_id>.nii.gz`` segmentation.
OUTPUT_COLUMN = "segmentation"
_CASE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
#: gzip's magic, then NIfTI-1's at byte 344 of an uncompressed single file (or header).
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_MAGIC = (b"n+1\x00", b"ni1\x00")


def bad_request(message: str) -> Exception:
    """An ``MlflowException`` that the scoring server answers with HTTP 400 and ``message``."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _decode(row: int, case_id: str, column: str, value: Any) -> bytes:
    """The NIfTI bytes of one cell; a bad cell is a 400 naming the case and column."""
    if not isinstance(value, str) or not value:
        raise bad_request(f"case {case_id} (row {row}): column {column!r}: expected the "
                          "base64 of a NIfTI file, got " + type(value).__name__)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"case {case_id} (row {row}): column {column!r}: not valid "
                          "base64") from None
    if not (data[:2] == _GZIP_MAGIC or data[344:348] in _NIFTI_MAGIC):
        raise bad_request(f"case {case_id} (row {row}): column {column!r}: not a NIfTI "
                          "file (.nii or .nii.gz)")
    return data


def write_request_cases(frame: Any, folder: Path) -> list[str]:
    """Write each row as ``<folder>/<case_id>/<case_id>_<modality>.nii[.gz]`` (BraTS layout).

    Args:
        frame: pandas DataFrame (or records) with the ``MODALITY_COLUMNS`` (base64 NIfTI) and
            an optional ``case_id`` column.
        folder: an empty folder.

    Returns:
        The case ids in row order.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE (HTTP 400) for a missing column, an empty
            request, a bad or repeated case id, or a cell that is not a base64 NIfTI file.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    missing = [column for column in MODALITY_COLUMNS if column not in frame.columns]
    if missing:
        raise bad_request(f"request: missing column(s) {missing}; expected "
                          f"{list(MODALITY_COLUMNS)} (base64 NIfTI) and optional 'case_id'")
    if len(frame) == 0:
        raise bad_request("request: no case (empty input)")
    case_ids: list[str] = []
    for row, record in enumerate(frame.to_dict("records")):
        case_id = record.get(CASE_COLUMN)
        case_id = f"case_{row:03d}" if case_id is None or case_id != case_id else str(case_id)
        if not _CASE_ID.match(case_id) or case_id in (".", ".."):
            raise bad_request(f"row {row}: case_id {case_id!r}: use letters, digits, '_', "
                              "'-' and '.'")
        if case_id in case_ids:
            raise bad_request(f"row {row}: case_id {case_id!r} is repeated")
        case_ids.append(case_id)
        case_dir = folder / case_id
        case_dir.mkdir(parents=True)
        for column in MODALITY_COLUMNS:
            data = _decode(row, case_id, column, record.get(column))
            suffix = ".nii.gz" if data[:2] == _GZIP_MAGIC else ".nii"
            (case_dir / f"{case_id}_{column}{suffix}").write_bytes(data)
    return case_ids


def response_frame(case_ids: Sequence[str], segmentations: Sequence[Path]) -> Any:
    """The response: a DataFrame of ``case_id`` and the base64 of each segmentation file."""
    import pandas as pd

    encoded = [base64.b64encode(Path(path).read_bytes()).decode("ascii")
               for path in segmentations]
    return pd.DataFrame({CASE_COLUMN: list(case_ids), OUTPUT_COLUMN: encoded})


def example_request(shape: Sequence[int] = (16, 16, 16), seed: int = 0) -> Any:
    """A one-row request of random NIfTI volumes (the logged input example), as a DataFrame."""
    import gzip
    import io

    import nibabel as nib
    import numpy as np
    import pandas as pd

    generator = np.random.default_rng(seed)
    row: dict[str, str] = {CASE_COLUMN: "example"}
    for column in MODALITY_COLUMNS:
        volume = generator.uniform(0, 100, size=tuple(shape)).astype(np.float32)
        image = nib.Nifti1Image(volume, np.eye(4))
        buffer = io.BytesIO()
        file_map = nib.Nifti1Image.make_file_map({"image": buffer, "header": buffer})
        image.to_file_map(file_map)
        row[column] = base64.b64encode(gzip.compress(buffer.getvalue(), mtime=0)).decode()
    return pd.DataFrame([row])


def model_signature() -> Any:
    """Strings in (``case_id`` optional, one column per modality), strings out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = [ColSpec("string", CASE_COLUMN, required=False)] + [
        ColSpec("string", column) for column in MODALITY_COLUMNS]
    outputs = [ColSpec("string", CASE_COLUMN), ColSpec("string", OUTPUT_COLUMN)]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))
