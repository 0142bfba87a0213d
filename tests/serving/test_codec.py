"""The served model's request / response (unet3d.serving.codec), without a server."""

from __future__ import annotations

import base64
import gzip
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
