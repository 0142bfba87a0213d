"""End-to-end runs of the task runner in subprocesses, with the debug preset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import mlflow_client, results, run_cli, run_dirs

pytestmark = pytest.mark.slow


def _assert_ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_debug_train_and_evaluate_then_evaluate_and_resume(tmp_path: Path) -> None:
    first = run_cli("debug=fast", cwd=tmp_path)
    _assert_ok(first)
    (run_dir,) = run_dirs(tmp_path)
    # The output dir holds the config, the log, the checkpoints, metrics and figures.
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "run.log").stat().st_size > 0
    assert (run_dir / "checkpoints" / "checkpoint").exists()
    assert (run_dir / "checkpoints" / "ckpt-6.index").exists()
    assert (run_dir / "metrics" / "per_case.csv").exists()
    record = results(run_dir)
    assert record["status"] == "FINISHED" and record["fold"] == 0
    for key in ("Dice_WT", "Dice_TC", "Dice_ET", "TumorCore", "PeritumoralEdema",
                "EnhancingTumor", "MeanDice", "WholeTumor"):
        assert 0.0 <= record["metrics"][key] <= 1.0
    # The held-out table is printed.
    assert "WT {1,2,4}" in first.stdout + first.stderr
    # The MLflow run: params are the flattened config, final metrics are logged.
    client = mlflow_client(tmp_path)
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["training.max_steps"] == "6"
    assert run.data.params["model.base_filters"] == "4"
    assert run.data.tags["mode"] == "train_and_evaluate"
    assert abs(run.data.metrics["Dice_WT"] - record["metrics"]["Dice_WT"]) < 1e-9
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3

    # Evaluate the model named by its MLflow run (runs:/<id> -> the run's output dir): same
    # held-out cases, same numbers as at the end of training.
    evaluated = run_cli("debug=fast", "mode=evaluate",
                        f"checkpoint=runs:/{record['mlflow_run_id']}", cwd=tmp_path)
    _assert_ok(evaluated)
    eval_dir = [path for path in run_dirs(tmp_path) if path != run_dir][0]
    eval_record = results(eval_dir)
    eval_run = client.get_run(eval_record["mlflow_run_id"])
    assert eval_run.data.tags["checkpoint"] == str(run_dir / "checkpoints" / "ckpt-6")
    for key in ("Dice_WT", "Dice_TC", "Dice_ET", "HD95_WT"):
        np.testing.assert_allclose(eval_record["metrics"][key], record["metrics"][key],
                                   rtol=1e-5)

    # Resume in the same run dir with more steps: the step count continues from 6.
    resumed = run_cli("debug=fast", "mode=train", "resume=true", "training.max_steps=9",
                      f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _assert_ok(resumed)
    output = resumed.stdout + resumed.stderr
    assert "restored" in output and "training steps 7..9" in output
    assert (run_dir / "checkpoints" / "ckpt-9.index").exists()
    resumed_record = results(run_dir)
    assert resumed_record["metrics"]["train_steps"] == 9
    # The resumed job continues the same MLflow run.
    assert resumed_record["mlflow_run_id"] == record["mlflow_run_id"]
    steps = [m.step for m in client.get_metric_history(record["mlflow_run_id"], "loss")]
    assert steps[-1] == 9


def test_missing_devices_fail_cleanly(tmp_path: Path) -> None:
    for device, word in (("mlu", "MLU"), ("gpu", "GPU")):
        result = run_cli("debug=fast", "precision=amp", f"device={device}", cwd=tmp_path)
        assert result.returncode != 0
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if "ERROR" in line]
        assert len(errors) == 1, errors
        assert f"no {word} device is visible" in errors[0] or f"no {word} is visible" in errors[0]
        assert "Traceback" not in result.stderr
    # Nothing was trained or tracked.
    assert not list((tmp_path / "outputs").glob("*/*/checkpoints"))


def test_brats2019_layout_at_full_size(tmp_path: Path) -> None:
    """Real-data path: HGG/ and LGG/ folders of 240x240x155 NIfTI files, as in BraTS 2019."""
    from unet3d.data.synthetic.generate import generate_dataset

    raw = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    generate_dataset(raw, num_cases=5, shape=(240, 240, 155), spacing=(1.0, 1.0, 1.0),
                     seed=7, layout="brats2019")
    assert (raw / "HGG").is_dir() and (raw / "LGG").is_dir()
    result = run_cli("debug=fast", "data=brats2019", f"data.raw_dir={raw}",
                     "data.crop_size=[32,32,32]", "training.max_steps=2",
                     "inference.window_size=[64,64,64]", "inference.batch_size=4",
                     cwd=tmp_path, timeout=900)
    _assert_ok(result)
    (run_dir,) = run_dirs(tmp_path)
    record = results(run_dir)
    assert record["status"] == "FINISHED"
    assert "Dice_WT" in record["metrics"]
    # One TFRecord per case was written by the same preprocessing path.
    assert len(list((tmp_path / "data" / "preprocessed").glob("*/*.tfrecord"))) == 5


def test_bad_data_fails_with_case_and_file(tmp_path: Path) -> None:
    from unet3d.data.synthetic.generate import generate_dataset

    raw = tmp_path / "raw"
    generate_dataset(raw, num_cases=5, shape=(32, 32, 32), spacing=(1.0, 1.0, 1.0), seed=3)
    broken = sorted(raw.glob("*/*_t2.nii.gz"))[2]
    broken.write_bytes(broken.read_bytes()[:200])
    result = run_cli("debug=fast", "data=brats2019", f"data.raw_dir={raw}", cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert any(broken.name in line and broken.parent.name in line for line in errors), errors
    assert not list((tmp_path / "outputs").glob("*/*/checkpoints"))
    shutil.rmtree(tmp_path / "outputs")
