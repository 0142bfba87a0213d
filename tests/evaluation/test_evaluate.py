"""The metric rows of a set of cases: CSV text and file, summary and its logged table."""

import csv
import logging
import subprocess
import sys

import pytest

from unet3d.evaluation.evaluate import csv_text, summarize_and_log, write_csv


def test_module_does_not_import_tensorflow():
    code = "import sys, unet3d.evaluation.evaluate; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_csv_keeps_the_column_order_and_writes_atomically(tmp_path):
    rows = [{"case_id": "b", "Dice_WT": 0.5, "HD95_WT": 3.0},
            {"case_id": "a", "Dice_WT": 1.0, "HD95_WT": float("nan")}]
    path = write_csv(rows, tmp_path / "metrics" / "per_case.csv")
    assert [item.name for item in path.parent.iterdir()] == ["per_case.csv"]
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [row["case_id"] for row in read] == ["b", "a"]
    assert list(read[0]) == ["case_id", "Dice_WT", "HD95_WT"]
    assert read[1]["HD95_WT"] == "nan"
    assert path.read_bytes().startswith(b"case_id,Dice_WT,HD95_WT\r\n")
    assert csv_text([]) == "case_id\r\n"


def test_summary_is_the_mean_over_cases_and_is_logged(caplog):
    rows = [{"case_id": "a", "Dice_WT": 0.5, "Dice_TC": float("nan")},
            {"case_id": "b", "Dice_WT": 1.0, "Dice_TC": 0.25}]
    with caplog.at_level(logging.INFO, logger="unet3d.evaluation.evaluate"):
        summary = summarize_and_log(rows, "held-out evaluation over 2 case(s):")
    assert summary == pytest.approx({"Dice_WT": 0.75, "Dice_TC": 0.25})
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith("held-out evaluation over 2 case(s):\n")
    assert "WT {1,2,4}" in message
    assert summarize_and_log([], "nothing:") == {}
