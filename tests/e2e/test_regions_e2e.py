"""End to end (issue 14): a 2-fold tiny sweep with the region head and deep supervision, then
``mode=postprocess`` on its out-of-fold predictions, then ``mode=predict`` with the sweep's
ensemble applying the chosen rules (and ``predict.postprocess=false`` turning them off)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import mlflow_client, results, run_cli

pytestmark = pytest.mark.slow

REGIONS = ("debug=fast", "num_folds=2", "training.max_steps=4", "model.head=regions",
           "loss=regions", "training.deep_supervision=true")


def _assert_ok(result) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_region_sweep_postprocess_then_ensemble_predict(tmp_path: Path) -> None:
    import nibabel as nib

    sweep = run_cli("--multirun", *REGIONS, "fold=0,1", cwd=tmp_path)
    _assert_ok(sweep)
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(path.parent for path in sweep_dir.glob("*/results.json"))
    assert [results(job)["status"] for job in jobs] == ["FINISHED", "FINISHED"]
    for job in jobs:
        identity = json.loads((job / "run_identity.json").read_text())
        assert identity["model"]["head"] == "regions"
        log_text = (job / "run.log").read_text()
        assert "deep supervision: 2 outputs" in log_text and "bce" in log_text
        assert list((job / "oof").glob("*.npz")), f"{job}: no out-of-fold predictions"
        assert 0.0 <= results(job)["metrics"]["Dice_WT"] <= 1.0

    chosen = run_cli("mode=postprocess", f"checkpoint={sweep_dir}", cwd=tmp_path)
    _assert_ok(chosen)
    record = json.loads((sweep_dir / "postprocessing.json").read_text())
    assert set(record["rules"]) == {"keep_largest_wt_component", "et_to_ncr_below", "unit",
                                    "remove_components_below"}
    assert record["num_cases"] == sum(len(list((job / "oof").glob("*.npz"))) for job in jobs)
    assert record["after"]["score"] >= record["before"]["score"]
    client = mlflow_client(tmp_path)
    parent_id = (sweep_dir / "mlflow_parent_run_id").read_text().strip()
    parent = client.get_run(parent_id)
    assert "postprocess_after_mean_Dice" in parent.data.metrics
    assert {item.path for item in client.list_artifacts(parent_id, "postprocessing")} >= {
        "postprocessing/table.md", "postprocessing/postprocessing.json"}

    # the ensemble of both folds on new cases, with the saved rules and without
    raw = next((tmp_path / "data" / "synthetic").glob("*/raw"))
    case = sorted(path for path in raw.iterdir() if path.is_dir())[0]
    new_cases = tmp_path / "new_cases"
    (new_cases / case.name).mkdir(parents=True)
    for image in case.glob(f"{case.name}_[tf]*.nii.gz"):
        (new_cases / case.name / image.name).symlink_to(image)
    outputs = {}
    for postprocess in ("true", "false"):
        out = tmp_path / f"segmentations_{postprocess}"
        predicted = run_cli("debug=fast", "mode=predict", f"predict.checkpoint={sweep_dir}",
                            f"predict.input_dir={new_cases}", f"predict.output_dir={out}",
                            f"predict.postprocess={postprocess}", cwd=tmp_path)
        _assert_ok(predicted)
        labels = np.asarray(nib.load(out / f"{case.name}.nii.gz").dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2, 4}
        outputs[postprocess] = (labels, predicted.stdout + predicted.stderr)
    assert "postprocessing.json" in outputs["true"][1]

    from unet3d.data.layouts.convention import BRATS2019
    from unet3d.evaluation.postprocess import apply_postprocessing, load_postprocessing

    expected = apply_postprocessing(outputs["false"][0], load_postprocessing(sweep_dir),
                                    BRATS2019)
    np.testing.assert_array_equal(outputs["true"][0], expected)
