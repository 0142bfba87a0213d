"""The record of the prediction an output folder holds: a rerun continues, another is refused."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from unet3d.data.layouts.convention import BRATS2023
from unet3d.errors import DataError
from unet3d.inference.output_folder import (
    SETTINGS_FILE,
    claim_output_folder,
    prediction_settings,
    split_written,
)
from unet3d.inference.predict import NiftiOutputs


def settings(**changes):
    values = {"checkpoints": ["/runs/a/checkpoints/ckpt-3"], "convention": BRATS2023,
              "postprocessing": None, "inference": {"overlap": 0.5, "tta": False},
              "precision": "float32", "save_probabilities": False, **changes}
    return prediction_settings(**values)


def test_a_new_folder_is_claimed_and_the_same_prediction_continues_it(tmp_path: Path) -> None:
    assert claim_output_folder(tmp_path, settings(), overwrite=False) is False
    record = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert record["labels"] == {"convention": BRATS2023.name, "values": [0, 1, 2, 3]}
    assert claim_output_folder(tmp_path, settings(), overwrite=False) is True


def test_another_prediction_is_refused_naming_what_differs(tmp_path: Path) -> None:
    claim_output_folder(tmp_path, settings(), overwrite=False)
    before = (tmp_path / SETTINGS_FILE).read_bytes()
    other = settings(checkpoints=["/runs/b/checkpoints/ckpt-3"], precision="mixed_bfloat16")
    with pytest.raises(DataError) as error:
        claim_output_folder(tmp_path, other, overwrite=False)
    message = str(error.value)
    assert message.startswith(f"predict.output_dir: {tmp_path} holds the outputs of another")
    assert "differs in checkpoints, precision)" in message and "\n" not in message
    assert (tmp_path / SETTINGS_FILE).read_bytes() == before
    # overwrite=true takes the folder for the new prediction.
    assert claim_output_folder(tmp_path, other, overwrite=True) is False
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["precision"] == "mixed_bfloat16"


def test_an_unreadable_record_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / SETTINGS_FILE).write_text("{half")
    with pytest.raises(DataError, match=rf"{SETTINGS_FILE}: unreadable"):
        claim_output_folder(tmp_path, settings(), overwrite=False)
    (tmp_path / SETTINGS_FILE).write_text("[1, 2]")
    with pytest.raises(DataError, match="not a JSON object"):
        claim_output_folder(tmp_path, settings(), overwrite=False)


@pytest.mark.parametrize("probabilities", [False, True])
def test_only_cases_with_every_file_in_place_are_kept(tmp_path: Path, probabilities) -> None:
    outputs = NiftiOutputs(tmp_path, save_probabilities=probabilities)
    (tmp_path / "A.nii.gz").write_bytes(b"x")
    (tmp_path / "A_probabilities.nii.gz").write_bytes(b"x")
    (tmp_path / "B.nii.gz").write_bytes(b"x")  # no probabilities file
    (tmp_path / "C.nii.gz.tmp-999999").write_bytes(b"x")  # a killed writer's, not in place
    cases = [SimpleNamespace(case_id=name) for name in ("A", "B", "C", "../D")]
    to_write, kept = split_written(cases, outputs)
    expected = ["A"] if probabilities else ["A", "B"]
    assert kept == expected
    assert [case.case_id for case in to_write] == [
        name for name in ("A", "B", "C", "../D") if name not in expected]
