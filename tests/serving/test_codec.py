"""The served model's request / response (unet3d.serving.codec), without a server."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from unet3d.serving.codec import (
    MODALITY_COLUMNS,
    example_request,
    model_signature,
    response_frame,
    write_request_cases,
)


def _row(**overrides: str) -> dict[str, str]:
    row = example_request(shape=(6, 5, 4)).iloc[0].to_dict()
    row.update(overrides)
    return row


def test_rows_become_brats_case_folders(tmp_path: Path) -> None:
    plain = nib.Nifti1Image(np.ones((6, 5, 4), np.float32), np.eye(4))
    uncompressed = base64.b64encode(plain.to_bytes()).decode()
    frame = pd.DataFrame([_row(case_id="a-1"), _row(case_id=None, t2=uncompressed)])
    assert write_request_cases(frame, tmp_path) == ["a-1", "case_001"]
    written = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.nii*"))
    assert written == ["a-1/a-1_flair.nii.gz", "a-1/a-1_t1.nii.gz", "a-1/a-1_t1ce.nii.gz",
                       "a-1/a-1_t2.nii.gz", "case_001/case_001_flair.nii.gz",
                       "case_001/case_001_t1.nii.gz", "case_001/case_001_t1ce.nii.gz",
                       "case_001/case_001_t2.nii"]
    image = nib.load(tmp_path / "a-1" / "a-1_t1.nii.gz")
    assert image.shape == (6, 5, 4) and image.get_data_dtype() == np.float32


@pytest.mark.parametrize(("frame", "message"), [
    ([{"case_id": "a", "t1": "x"}], r"^request: missing column\(s\) \['t1ce', 't2', 'flair'\]"),
    (pd.DataFrame(columns=list(MODALITY_COLUMNS)), "^request: no case"),
    ([_row(t1="not base64!")], r"^case example \(row 0\): column 't1': not valid base64$"),
    ([_row(t1ce=base64.b64encode(b"plain text").decode())],
     r"^case example \(row 0\): column 't1ce': not a NIfTI file"),
    ([_row(flair=None)], r"column 'flair': expected the base64 of a NIfTI file, got NoneType"),
    ([_row(case_id="../x")], r"^row 0: case_id '\.\./x': use letters"),
    ([_row(), _row()], r"^row 1: case_id 'example' is repeated$"),
])
def test_a_bad_request_is_a_400_naming_the_row_and_column(tmp_path: Path, frame, message) -> None:
    with pytest.raises(MlflowException, match=message) as raised:
        write_request_cases(frame, tmp_path)
    assert raised.value.get_http_status_code() == 400


def test_response_and_signature(tmp_path: Path) -> None:
    data = gzip.compress(b"segmentation bytes")
    (tmp_path / "a.nii.gz").write_bytes(data)
    frame = response_frame(["a"], [tmp_path / "a.nii.gz"])
    assert list(frame.columns) == ["case_id", "segmentation"]
    assert base64.b64decode(frame["segmentation"][0]) == data
    signature = model_signature()
    assert signature.inputs.input_names() == ["case_id", *MODALITY_COLUMNS]
    assert signature.outputs.input_names() == ["case_id", "segmentation"]


# ---- one-line errors, the size limits (read from the header), the client's line -------------

def _gzip_of_constant_volume(shape: tuple[int, ...], dtype=np.float32) -> bytes:
    """A .nii.gz of zeros, compressed piece by piece (never whole in memory)."""
    import zlib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    parts = [compressor.compress(header.binaryblock + b"\0" * 4)]
    remaining = int(np.prod(shape)) * np.dtype(dtype).itemsize
    piece = b"\0" * (1 << 20)
    while remaining > 0:
        parts.append(compressor.compress(piece[: min(remaining, len(piece))]))
        remaining -= len(piece)
    parts.append(compressor.flush())
    return b"".join(parts)


def test_a_compressed_constant_volume_is_refused_from_its_header(tmp_path: Path) -> None:
    """The issue's request: a 0.3 MB gzip of a 448x448x320 float32 volume (257 MB once
    decompressed) is a 413 naming case, column and limit, decided on 540 decompressed bytes."""
    import tracemalloc

    from unet3d.serving.codec import VolumeLimits

    bomb = _gzip_of_constant_volume((448, 448, 320))
    assert len(bomb) < 400_000
    row = _row(case_id="big", flair=base64.b64encode(bomb).decode())
    limits = VolumeLimits(max_voxels=16_777_216, max_bytes=268_435_456)
    tracemalloc.start()
    with pytest.raises(MlflowException) as raised:
        write_request_cases([row], tmp_path / "cases", limits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert raised.value.get_http_status_code() == 413
    message = json.loads(raised.value.serialize_as_json())["message"]
    assert message == ("case big (row 0): column 'flair': volume of 64225280 voxels "
                       "(448x448x320) exceeds the limit of 16777216 voxels per volume "
                       "(serve.max_voxels)")
    assert peak < 8 * len(bomb) + 4_000_000  # the request and its base64, nothing decompressed
    assert not (tmp_path / "cases").exists()  # nothing written for a refused request

    row = _row(t1=base64.b64encode(_gzip_of_constant_volume((6, 5, 4))).decode())
    with pytest.raises(MlflowException, match=r"column 't1': voxel data of 480 bytes \(6x5x4, "
                                              r"float32\) exceeds the limit of 479 bytes per "
                                              r"volume \(serve.max_volume_bytes\)$"):
        write_request_cases([row], tmp_path / "other", VolumeLimits(10**9, 479))
    with pytest.raises(MlflowException, match=r"column 't1ce': file of \d+ bytes exceeds"):
        write_request_cases([row], tmp_path / "other", VolumeLimits(10**9, 481))
    write_request_cases([_row()], tmp_path / "fits", VolumeLimits(120, 2000))


# The parameters are test ids: they must be the same in every pytest-xdist worker, so the gzip
# streams carry no time stamp (mtime=0).
@pytest.mark.parametrize(("content", "message"), [
    (gzip.compress(b"x" * 100, mtime=0),
     r"ends within its NIfTI header \(100 of|not a NIfTI header"),
    (_gzip_of_constant_volume((6, 5, 4))[:30], r"unreadable gzip stream"),
], ids=["header-only", "truncated-gzip"])
def test_an_unreadable_header_is_a_400(tmp_path: Path, content: bytes, message: str) -> None:
    from unet3d.serving.codec import VolumeLimits

    row = _row(t2=base64.b64encode(content).decode())
    with pytest.raises(MlflowException, match=rf"^case example \(row 0\): column 't2': "
                                              rf"({message})") as raised:
        write_request_cases([row], tmp_path, VolumeLimits(10**6, 10**8))
    assert raised.value.get_http_status_code() == 400


def test_a_300_character_case_id_is_a_400(tmp_path: Path) -> None:
    with pytest.raises(MlflowException, match=r"^row 0: case_id of 300 characters "
                                              r"\(a{20}\.\.\.\): at most 128$") as raised:
        write_request_cases([_row(case_id="a" * 300)], tmp_path)
    assert raised.value.get_http_status_code() == 400
    assert write_request_cases([_row(case_id="b" * 128)], tmp_path) == ["b" * 128]


def test_the_body_keeps_one_line_when_mlflow_rewrites_the_message() -> None:
    """MLflow's scoring server prefixes the message with the request's DataFrame (several
    lines); the body sent is still the one line, with the status and extra fields."""
    from unet3d.serving.codec import request_error

    error = request_error("busy: 2 prediction(s) running\nsecond line", 503, retry_after_s=30)
    error.message = "Failed to predict data '   case_id  t1\n0  x  ...'. \nError: busy"
    body = json.loads(error.serialize_as_json())
    assert body == {"error_code": "TEMPORARILY_UNAVAILABLE",
                    "message": "busy: 2 prediction(s) running", "retry_after_s": 30}
    assert error.get_http_status_code() == 503
    assert request_error("too big", 413).get_http_status_code() == 413


def test_the_client_line_names_the_column_not_the_server_path(tmp_path: Path) -> None:
    from unet3d.serving.codec import client_line, request_files

    folder = tmp_path / "unet3d-serve-x" / "cases"
    line = (f"case c1: {folder}/c1/c1_t2.nii.gz: shape (24, 24, 20) differs from (24, 24, 24) "
            f"of c1_t1.nii.gz; see {tmp_path}/unet3d-serve-x/job")
    assert client_line(line, request_files(folder, ["c1"]), tmp_path / "unet3d-serve-x") == (
        "case c1: column 't2': shape (24, 24, 20) differs from (24, 24, 24) of column 't1'; "
        "see <request>/job")
