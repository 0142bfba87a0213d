"""``mode=score``: a folder of NIfTI predictions scored against references from the command line,
voxel-wise and lesion-wise, into per_case.csv, results.json and MLflow; bad folders fail in one
line without writing metrics."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import mlflow_client, results, run_cli, run_dirs
from tests.evaluation.lesionwise_cases import hand_built_cases
from unet3d.data.layouts.convention import BRATS2023
from unet3d.evaluation.lesionwise import RULES, lesionwise_metrics

pytestmark = pytest.mark.slow


def _write(path: Path, volume: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def _folders(tmp_path: Path) -> tuple[Path, Path, dict]:
    cases = {name: hand_built_cases()[name] for name in ("two_lesions_one_missed",
                                                         "anisotropic")}
    for index, (pred, ref, spacing) in enumerate(cases.values()):
        case = f"BraTS-GLI-{index:05d}-000"
        _write(tmp_path / "preds" / f"{case}.nii.gz", pred, spacing)
        _write(tmp_path / "refs" / case / f"{case}-seg.nii.gz", ref, spacing)
    return tmp_path / "preds", tmp_path / "refs", cases


def test_score_writes_voxel_and_lesion_wise_metrics(tmp_path):
    preds, refs, cases = _folders(tmp_path)
    done = run_cli("mode=score", "data=brats2023", f"score.predictions={preds}",
                   f"score.references={refs}", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lesion Dice" in done.stdout + done.stderr
    assert "tensorflow" not in (done.stdout + done.stderr).lower()
    run_dir = run_dirs(tmp_path)[-1]
    with open(run_dir / "metrics" / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    expected = [lesionwise_metrics(pred, ref, RULES["brats2023"], BRATS2023, spacing)
                for pred, ref, spacing in cases.values()]
    for row, wanted in zip(rows, expected, strict=True):
        assert float(row["LesionDice_ET"]) == pytest.approx(wanted["LesionDice_ET"])
        assert float(row["LesionHD95_ET"]) == pytest.approx(wanted["LesionHD95_ET"])
        assert float(row["LesionFN_ET"]) == 1.0
    metrics = results(run_dir)["metrics"]
    assert metrics["LesionDice_ET"] == pytest.approx((0.5 + (128 / 144) / 2) / 2)
    assert "Dice_ET" in metrics and "HD95_WT" in metrics
    run = mlflow_client(tmp_path).get_run(results(run_dir)["mlflow_run_id"])
    assert run.data.metrics["LesionDice_ET"] == pytest.approx(metrics["LesionDice_ET"])
    assert run.data.tags["evaluation.lesionwise"] == "brats2023"


def test_score_missing_reference_is_one_line(tmp_path):
    preds, refs, _ = _folders(tmp_path)
    _write(preds / "BraTS-GLI-00009-000.nii.gz", np.zeros((4, 4, 4), np.uint8))
    done = run_cli("mode=score", "data=brats2023", "evaluation.lesionwise=off",
                   f"score.predictions={preds}", f"score.references={refs}", cwd=tmp_path,
                   timeout=300)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if "no reference for case" in line]
    assert errors and "BraTS-GLI-00009-000.nii.gz" in errors[0], output[-2000:]
    assert not list((tmp_path / "outputs").glob("*/*/metrics/per_case.csv"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
