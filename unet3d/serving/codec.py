"""The request and response of the served model (``POST /invocations`` of ``mlflow models serve``).

Request (JSON)::

    {"dataframe_records": [{"case_id": "case_001",
                            "t1": "<base64 of case_001_t1.nii.gz>", "t1ce": "...",
                            "t2": "...", "flair": "..."}]}

one row per case; each modality column is a base64-encoded NIfTI file (``.nii.gz`` or
``.nii``), all on one grid; ``case_id`` is optional (default ``case_<row>``; letters, digits,
``_``, ``-``, ``.``). Response: ``{"predictions": [{"case_id": ..., "segmentation": "<base64 of
<case_id>.nii.gz>"}]}``: uint8 labels in the data set's label convention (BraTS 2019: 0, 1, 2,
4) on the input's grid and affine, exactly the file ``mode=predict`` writes.

Errors are ``request_error``: an ``MlflowException`` that MLflow's scoring server answers with
its status and a JSON body whose ``message`` is one line naming the case and the column (no
server path, no stack trace). A malformed request (missing column, bad base64, not NIfTI, a
bad case id) is HTTP 400; a volume over the limits (``VolumeLimits``, read from its NIfTI
header before anything is decompressed) is HTTP 413.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import io
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Input columns: one base64 NIfTI per modality, in the model's channel order.
MODALITY_COLUMNS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
CASE_COLUMN = "case_id"
#: Output column: the base64 of the ``<case_id>.nii.gz`` segmentation.
OUTPUT_COLUMN = "segmentation"
#: A case id: its folder and files are named after it (``<id>/<id>_flair.nii.gz``: 13 more
#: characters), and file names have at most 255 bytes.
MAX_CASE_ID_LENGTH = 128
_CASE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
#: gzip's magic, then NIfTI-1's at byte 344 of an uncompressed single file (or header).
_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI_MAGIC = (b"n+1\x00", b"ni1\x00")


#: HTTP status -> MLflow error code of a ``request_error`` (its JSON body's ``error_code``).
_ERROR_CODES = {400: "INVALID_PARAMETER_VALUE", 413: "RESOURCE_EXHAUSTED",
                500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE"}


@functools.cache
def _request_error_class() -> type:
    """``RequestError``: defined on first use, so that importing this module imports no MLflow.

    MLflow's scoring server (``mlflow/pyfunc/scoring_server/__init__.py`` of MLflow 3.x) turns
    an ``MlflowException`` raised by the model into the response: status
    ``get_http_status_code()``, body ``serialize_as_json()``. On the way it rewrites the
    exception's ``message`` to ``Failed to predict data '<the request's DataFrame>'. Error:
    ...`` (several lines, with the request's data); this class answers with the line it was
    made with instead, and with any status (MLflow maps no error code to 413).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    class RequestError(MlflowException):
        """A served-model error: its HTTP status and one line (see ``request_error``)."""

        def __init__(self, line: str, status: int, **fields: Any) -> None:
            code = _ERROR_CODES.get(status, "INTERNAL_ERROR")
            super().__init__(line, error_code=getattr(databricks_pb2, code), **fields)
            self.line = line
            self.status = status

        def get_http_status_code(self) -> int:
            return self.status

        def serialize_as_json(self) -> str:
            import json

            return json.dumps({"error_code": self.error_code, "message": self.line,
                               **self.json_kwargs})

    return RequestError


def request_error(message: str, status: int = 400, **fields: Any) -> Exception:
    """The exception the scoring server answers with HTTP ``status`` and ``message``.

    Args:
        message: the reason; only its first line is kept (one line, no traceback).
        status: 400 (malformed input), 413 (over a limit), 503 (busy) or 500.
        fields: extra JSON fields of the body (e.g. ``retry_after_s``).

    Returns:
        An ``MlflowException`` (error code ``INVALID_PARAMETER_VALUE``, ``RESOURCE_EXHAUSTED``,
        ``TEMPORARILY_UNAVAILABLE`` or ``INTERNAL_ERROR``) whose body's ``message`` is the line.
    """
    text = str(message).strip()
    line = text.splitlines()[0] if text else "request failed"
    return _request_error_class()(line, int(status), **fields)


def bad_request(message: str) -> Exception:
    """An ``MlflowException`` that the scoring server answers with HTTP 400 and ``message``."""
    return request_error(message, 400)


@dataclass(frozen=True)
class VolumeLimits:
    """What one volume (one modality of one case) of a request may hold.

    Checked from the NIfTI header (the first 348 or 540 bytes of the file, decompressed alone)
    before anything else of the file is decompressed or read. Defaults and how to set them:
    ``conf/serve/default.yaml`` (``serve.max_voxels``, ``serve.max_volume_bytes``).

    Attributes:
        max_voxels: voxels of the volume (the product of its header's shape).
        max_bytes: bytes of its voxel data once decompressed (voxels x bytes per voxel of its
            header's data type), and bytes of the file as sent.
    """

    max_voxels: int
    max_bytes: int


def volume_header(data: bytes) -> Any:
    """The NIfTI-1 or NIfTI-2 header of a file's bytes, decompressing only its first bytes.

    Args:
        data: the file (``.nii`` or gzip-compressed ``.nii.gz``).

    Returns:
        The nibabel header (``Nifti1Header`` or ``Nifti2Header``).

    Raises:
        ValueError: the header cannot be read (a gzip stream that ends or breaks within it,
            a header size other than NIfTI's 348 or 540 bytes); the message says why.
    """
    import nibabel as nib

    try:
        if data[:2] == _GZIP_MAGIC:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                head = stream.read(540)
        else:
            head = data[:540]
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(f"unreadable gzip stream ({error})") from None
    for order in ("little", "big"):
        size = int.from_bytes(head[:4], order)
        if size in (348, 540):
            break
    else:
        raise ValueError("not a NIfTI header (its first 4 bytes give no size of 348 or 540)")
    if len(head) < size:
        raise ValueError(f"the file ends within its NIfTI header ({len(head)} of {size} bytes)")
    kind = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    try:
        return kind.from_fileobj(io.BytesIO(head[:size]))
    except Exception as error:  # noqa: BLE001 - nibabel raises several types on bad headers
        raise ValueError(f"unreadable NIfTI header ({error})") from None


def check_volume_size(where: str, data: bytes, limits: VolumeLimits) -> None:
    """Refuse a volume over ``limits`` (HTTP 413), reading only its header.

    Args:
        where: ``case <id> (row <r>): column '<modality>'``, the start of the message.
        data: the file's bytes (compressed or not).
        limits: the limits.

    Raises:
        MlflowException: HTTP 413 naming ``where``, the volume's size and the limit; HTTP 400
            when the header cannot be read.
    """
    try:
        header = volume_header(data)
    except ValueError as error:
        raise bad_request(f"{where}: {error}") from None
    shape = tuple(int(side) for side in header.get_data_shape())
    voxels = math.prod(shape)
    volume_bytes = voxels * int(header.get_data_dtype().itemsize)
    sides = "x".join(str(side) for side in shape)
    if voxels > limits.max_voxels:
        raise request_error(
            f"{where}: volume of {voxels} voxels ({sides}) exceeds the limit of "
            f"{limits.max_voxels} voxels per volume (serve.max_voxels)", 413)
    if max(volume_bytes, len(data)) > limits.max_bytes:
        what = (f"voxel data of {volume_bytes} bytes ({sides}, {header.get_data_dtype()})"
                if volume_bytes > limits.max_bytes else f"file of {len(data)} bytes")
        raise request_error(
            f"{where}: {what} exceeds the limit of {limits.max_bytes} bytes per volume "
            "(serve.max_volume_bytes)", 413)


def _decode(row: int, case_id: str, column: str, value: Any,
            limits: VolumeLimits | None = None) -> bytes:
    """The NIfTI bytes of one cell; a bad cell is a 400 (a too large one a 413) naming the case
    and column."""
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
    if limits is not None:
        check_volume_size(f"case {case_id} (row {row}): column {column!r}", data, limits)
    return data


def write_request_cases(frame: Any, folder: Path, limits: VolumeLimits | None = None
                        ) -> list[str]:
    """Write each row as ``<folder>/<case_id>/<case_id>_<modality>.nii[.gz]`` (BraTS layout).

    Every cell is checked (and, with ``limits``, its header's size) before any file is written.

    Args:
        frame: pandas DataFrame (or records) with the ``MODALITY_COLUMNS`` (base64 NIfTI) and
            an optional ``case_id`` column.
        folder: an empty folder.
        limits: the size limits of one volume; None checks none.

    Returns:
        The case ids in row order.

    Raises:
        MlflowException: HTTP 400 for a missing column, an empty request, a bad, too long or
            repeated case id, or a cell that is not a base64 NIfTI file; HTTP 413 for a
            volume over ``limits``. The message is one line naming the row or case and column.
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
    files: list[tuple[Path, bytes]] = []
    for row, record in enumerate(frame.to_dict("records")):
        case_id = record.get(CASE_COLUMN)
        case_id = f"case_{row:03d}" if case_id is None or case_id != case_id else str(case_id)
        if len(case_id) > MAX_CASE_ID_LENGTH:
            raise bad_request(f"row {row}: case_id of {len(case_id)} characters "
                              f"({case_id[:20]}...): at most {MAX_CASE_ID_LENGTH}")
        if not _CASE_ID.match(case_id) or case_id in (".", ".."):
            raise bad_request(f"row {row}: case_id {case_id!r}: use letters, digits, '_', "
                              "'-' and '.'")
        if case_id in case_ids:
            raise bad_request(f"row {row}: case_id {case_id!r} is repeated")
        case_ids.append(case_id)
        for column in MODALITY_COLUMNS:
            data = _decode(row, case_id, column, record.get(column), limits)
            suffix = ".nii.gz" if data[:2] == _GZIP_MAGIC else ".nii"
            files.append((folder / case_id / f"{case_id}_{column}{suffix}", data))
    for path, data in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return case_ids


def request_files(folder: Path, case_ids: Sequence[str]) -> dict[str, str]:
    """Each written file of a request (full path, then file name) -> ``column '<modality>'``.

    For messages sent back to the client: the server's paths replaced by the request's column.
    """
    names: dict[str, str] = {}
    for case_id in case_ids:
        for column in MODALITY_COLUMNS:
            for suffix in (".nii.gz", ".nii"):
                path = folder / case_id / f"{case_id}_{column}{suffix}"
                names[str(path)] = f"column {column!r}"
    for case_id in case_ids:
        for column in MODALITY_COLUMNS:
            for suffix in (".nii.gz", ".nii"):
                names[f"{case_id}_{column}{suffix}"] = f"column {column!r}"
    return names


def client_line(line: str, replacements: Mapping[str, str], scratch: Path) -> str:
    """``line`` with the server's file paths replaced (``replacements``, in order) and any
    other path under ``scratch`` (the request's temporary folder) cut to ``<request>``."""
    for server_text, client_text in replacements.items():
        line = line.replace(server_text, client_text)
    return line.replace(str(scratch), "<request>")


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
