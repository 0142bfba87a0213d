"""Prediction outputs after faults: a full disk stops predict at once with one line naming the
file (earlier outputs intact), and a killed writer's temporary file is replaced by the rerun."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from tests.inference.test_nifti_writer import (
    SHAPE,
    labels_volume,
    leftovers,
    reference,  # noqa: F401 - the fixture
)
from unet3d.errors import DataError, StorageError
from unet3d.inference.background import BackgroundOutputs
from unet3d.inference.case_loop import segment_cases
from unet3d.inference.inputs import InputCase, PendingCase
from unet3d.inference.nifti_writer import write_segmentation
from unet3d.inference.predict import NiftiOutputs
from unet3d.runs import files
from unet3d.runs.files import FAULT_VARIABLE


@pytest.fixture(autouse=True)
def _no_fault_hook(monkeypatch):
    monkeypatch.delenv(FAULT_VARIABLE, raising=False)
    files._fault_counts.clear()


def test_a_full_disk_leaves_no_output_and_names_the_file(
        tmp_path, reference, monkeypatch):  # noqa: F811
    path = tmp_path / "case1.nii.gz"
    monkeypatch.setenv(FAULT_VARIABLE, "enospc:case1.nii.gz")
    with pytest.raises(StorageError) as error:
        write_segmentation(labels_volume(), reference, path)
    assert str(error.value).startswith(f"{path}: cannot write (no space left on device)")
    assert not path.exists() and leftovers(tmp_path) == []


def test_a_killed_writers_temporary_file_is_removed_when_the_case_is_rewritten(
        tmp_path, reference):  # noqa: F811
    path = tmp_path / "case1.nii.gz"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"case1.nii.gz.tmp-{dead.pid}"
    stale.write_bytes(b"\x1f\x8b half a gzip stream")
    write_segmentation(labels_volume(), reference, path)
    assert leftovers(tmp_path) == []
    assert np.array_equal(np.asanyarray(nib.load(path).dataobj), labels_volume())


class _Predictor:
    def probabilities(self, image):
        shape = image.shape[:3]
        return np.stack([np.ones(shape, np.float32)] + [np.zeros(shape, np.float32)] * 3, -1)


def _pending(case_id, grid):
    def load():
        return InputCase(case_id, np.zeros((*SHAPE, 4), np.float32), None, (1.0, 1.0, 1.0),
                         grid)
    return PendingCase(case_id, f"/data/{case_id}", load)


def test_predict_stops_at_a_full_disk_but_goes_on_past_a_bad_case(
        tmp_path, reference, monkeypatch):  # noqa: F811
    def broken():
        raise DataError("case bad: /data/bad/bad_t1.nii.gz: truncated file")

    cases = [_pending("case1", reference), PendingCase("bad", "/data/bad", broken),
             _pending("case2", reference), _pending("case3", reference)]
    monkeypatch.setenv(FAULT_VARIABLE, "enospc:*.nii.gz:2")
    out = tmp_path / "predictions"
    out.mkdir()
    with pytest.raises(StorageError) as error:
        segment_cases(_Predictor(), cases, verb="predicted", outputs=NiftiOutputs(out),
                      keep_going=True)
    assert str(error.value).startswith(f"{out / 'case2.nii.gz'}: cannot write")
    assert sorted(path.name for path in out.iterdir()) == ["case1.nii.gz"]  # case3: not tried
    assert np.all(np.asanyarray(nib.load(out / "case1.nii.gz").dataobj) == 0)


@pytest.mark.parametrize("failing", [2, 3])
def test_predicts_background_writer_stops_at_a_full_disk_too(
        tmp_path, reference, monkeypatch, failing):  # noqa: F811
    """mode=predict writes through BackgroundOutputs: the full disk is raised at the next
    write (case 2 of 3) or when the writer is closed (the last case), not filed as one failed
    case among others."""
    cases = [_pending(f"case{index}", reference) for index in (1, 2, 3)]
    monkeypatch.setenv(FAULT_VARIABLE, f"enospc:*.nii.gz:{failing}")
    out = tmp_path / "predictions"
    out.mkdir()
    with pytest.raises(StorageError) as error:
        with BackgroundOutputs(NiftiOutputs(out)) as writer:
            segment_cases(_Predictor(), cases, verb="predicted", outputs=writer,
                          keep_going=True)
            writer.close()
    assert str(error.value).startswith(f"{out / f'case{failing}.nii.gz'}: cannot write")
    written = sorted(path.name for path in out.iterdir())
    assert written == [f"case{index}.nii.gz" for index in range(1, failing)]
    assert np.all(np.asanyarray(nib.load(out / "case1.nii.gz").dataobj) == 0)
