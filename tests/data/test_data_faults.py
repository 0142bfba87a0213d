"""Data sets as users have them: a segmentation with another name (BraTS 2020's case 355), a
preprocessing job killed while writing a record, two jobs preparing one cache at once."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unet3d.data.layouts.case_folders import CaseFolders
from unet3d.data.preprocess import preprocess_dataset
from unet3d.data.tfrecord import validate_records, write_record
from unet3d.errors import DataError, StorageError
from unet3d.runs.files import FAULT_MARKER_VARIABLE, FAULT_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
CASE = "BraTS19_SYN_0003"
#: The scanner-style name BraTS 2020 ships for case BraTS20_Training_355's segmentation.
ODD_NAME = "W39_1998.09.19_Segm.nii.gz"


def _misname_segmentation(raw: Path) -> Path:
    odd = raw / CASE / ODD_NAME
    (raw / CASE / f"{CASE}_seg.nii.gz").rename(odd)
    return odd


def test_a_segmentation_with_another_name_stops_training_with_one_line(raw_copy: Path) -> None:
    _misname_segmentation(raw_copy)
    with pytest.raises(DataError) as error:
        CaseFolders().find_cases(raw_copy)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"case {CASE}: missing file {raw_copy / CASE / CASE}_seg.nii.gz")
    assert f"{CASE}_seg.nii" in message  # both endings looked for
    assert ODD_NAME in message and f"{CASE}_flair.nii.gz" in message  # what was found
    assert f"rename the segmentation to {CASE}_seg.nii.gz" in message


def test_predict_reads_such_a_case_without_label_and_says_so(
        raw_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    _misname_segmentation(raw_copy)
    with caplog.at_level(logging.WARNING, logger="unet3d.data.layouts.case_folders"):
        cases = CaseFolders().find_cases(raw_copy, require_label=False, allow_missing=True)
    by_id = {case.case_id: case for case in cases}
    assert len(by_id) == 4 and by_id[CASE].label is None
    assert all(case.label is not None for case_id, case in by_id.items() if case_id != CASE)
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith(f"case {CASE}: missing file") and ODD_NAME in line
    assert "read without a label" in line


def test_a_test_set_without_segmentations_is_read_without_warnings(
        raw_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    for seg in raw_copy.glob("*/*_seg.nii.gz"):
        seg.unlink()
    with caplog.at_level(logging.WARNING, logger="unet3d.data.layouts.case_folders"):
        cases = CaseFolders().find_cases(raw_copy, require_label=False)
    assert all(case.label is None for case in cases) and not caplog.records


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the writer ended before the pause"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text().strip()


@pytest.mark.slow
def test_preprocessing_killed_while_writing_a_record_rebuilds_only_what_is_incomplete(
        tiny_raw: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "records"
    marker = tmp_path / "paused"
    code = ("import sys\n"
            "from unet3d.data.preprocess import preprocess_dataset\n"
            "preprocess_dataset(sys.argv[1], sys.argv[2])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           FAULT_VARIABLE: "pause:*.tfrecord:3", FAULT_MARKER_VARIABLE: str(marker)}
    process = subprocess.Popen([sys.executable, "-c", code, str(tiny_raw), str(out)], env=env)
    paused = Path(_wait_for(marker, process))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    # Two records in place, the third only as the killed writer's temporary file.
    done = sorted(out.glob("*.tfrecord"))
    assert len(done) == 2 and paused not in done
    assert list(out.glob(f"{paused.name}.tmp-*"))
    before = {path.name: path.stat().st_mtime_ns for path in done}

    with caplog.at_level(logging.INFO, logger="unet3d.data.preprocess"):
        files = preprocess_dataset(tiny_raw, out)
    assert "Preprocessing 2 of 4 case(s)" in caplog.text
    assert {Path(path).name: Path(path).stat().st_mtime_ns for path in files
            if Path(path).name in before} == before
    assert not list(out.glob("*.tmp-*"))
    validate_records(files)


def test_a_full_disk_under_the_record_writer_is_one_line_and_leaves_no_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorFlow's writer raises its own ResourceExhaustedError (not an OSError) when the
    disk is full: it becomes the one StorageError line naming the record."""
    import numpy as np
    import tensorflow as tf

    class FullDisk:
        def __init__(self, path: str) -> None:
            self.path = path

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc_info: object) -> None:
            return None

        def write(self, data: bytes) -> None:
            raise tf.errors.ResourceExhaustedError(None, None,
                                                   f"{self.path}; No space left on device")

    record = {"case_id": "case1", "image": np.zeros((4, 4, 4, 4), np.uint8),
              "label": np.zeros((4, 4, 4), np.uint8), "mean": np.zeros(4, np.float32),
              "std": np.ones(4, np.float32)}
    monkeypatch.setattr(tf.io, "TFRecordWriter", FullDisk)
    target = tmp_path / "case1.tfrecord"
    with pytest.raises(StorageError) as error:
        write_record(target, record)
    assert str(error.value).startswith(f"{target}: cannot write (no space left on device)")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []
