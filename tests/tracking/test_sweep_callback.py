"""CrossValidationCallback end to end on a toy Hydra app (no TensorFlow): parent run, nested
fold runs, summary metrics, failed folds, exit status; basic and joblib launchers."""

from __future__ import annotations

import csv
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from _tracking_helpers import PYTHON, subprocess_env, wait_for_file

from unet3d.tracking.parent_run import PARENT_RUN_ID_FILE, read_parent_run_id

APP = Path(__file__).resolve().parent / "_sweep_app" / "app.py"


def run_sweep(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(APP), "--multirun", f"hydra.sweep.dir={root / 'sweep'}", *overrides],
        cwd=root,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def runs_by_kind(client, parent_id: str) -> tuple[list, list]:
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    folds = [run for run in children if "unet3d.run_kind" not in run.data.tags]
    summaries = [run for run in children if run.data.tags.get("unet3d.run_kind")]
    return folds, summaries


def test_basic_launcher_failed_fold_is_summarised_and_exits_non_zero(store_root, client) -> None:
    completed = run_sweep(store_root, "fold=0,1", "precision=fp32,amp", "fail_fold=1")
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output
    assert "Cross-validation summary" in output and "Sweep FAILED" in output

    sweep_dir = store_root / "sweep"
    parent_id = read_parent_run_id(sweep_dir)
    assert parent_id and (sweep_dir / PARENT_RUN_ID_FILE).exists()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FAILED"
    assert parent.info.run_name == "cv-sweep"
    assert parent.data.tags["unet3d.run_kind"] == "cv_parent"
    assert parent.data.tags["cv.failed_folds"] == "precision=amp:fold1"
    assert "fold=0,1" in parent.data.tags["unet3d.overrides"]
    assert "fold" not in parent.data.params and "precision" not in parent.data.params
    assert parent.data.params["num_folds"] == "2"
    assert "| Dice_WT |" in parent.data.tags["mlflow.note.content"]

    folds, group_runs = runs_by_kind(client, parent_id)
    assert len(folds) == 4
    failed = [run for run in folds if run.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags["precision"] == "amp"
    assert failed[0].data.tags["error"].startswith("FloatingPointError")
    assert all(run.info.status == "FINISHED" for run in folds if run not in failed)

    # Parent summary equals numpy over the children's own MLflow metrics.
    for precision in ("fp32", "amp"):
        values = [
            run.data.metrics["Dice_WT"]
            for run in folds
            if run.data.tags["precision"] == precision and run.info.status == "FINISHED"
        ]
        prefix = f"precision-{precision}"
        assert parent.data.metrics[f"cv_mean/{prefix}/Dice_WT"] == pytest.approx(np.mean(values))
        if len(values) > 1:
            expected_std = np.std(values, ddof=1)
            assert parent.data.metrics[f"cv_std/{prefix}/Dice_WT"] == pytest.approx(expected_std)
    assert parent.data.metrics["cv_folds/precision-amp/failed"] == 1

    # One summary run per configuration group, FAILED where a fold failed.
    by_group = {run.data.tags["unet3d.cv_group"]: run for run in group_runs}
    assert set(by_group) == {"precision=amp", "precision=fp32"}
    assert by_group["precision=amp"].info.status == "FAILED"
    assert by_group["precision=fp32"].data.params == {"precision": "fp32"}
    assert by_group["precision=fp32"].data.metrics["cv_mean/Dice_WT"] == pytest.approx(0.55)

    artifacts = {item.path for item in client.list_artifacts(parent_id, "cv_summary")}
    assert {
        "cv_summary/cv_summary.md",
        "cv_summary/cv_folds.csv",
        "cv_summary/cv_summary.csv",
        "cv_summary/multirun.yaml",
    } <= artifacts
    rows = list(csv.DictReader((sweep_dir / "cv_folds.csv").open()))
    assert sorted(row["status"] for row in rows) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]


@pytest.mark.slow
def test_joblib_launcher_parallel_folds(store_root, client) -> None:
    completed = run_sweep(
        store_root, "fold=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output

    parent_id = read_parent_run_id(store_root / "sweep")
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["unet3d.launcher"] == "JoblibLauncher"
    assert parent.data.tags["cv.failed_folds"] == "none"
    folds, group_runs = runs_by_kind(client, parent_id)
    assert len(folds) == 2 and not group_runs
    assert {run.info.status for run in folds} == {"FINISHED"}
    # Runs from two processes: every metric arrived.
    values = [run.data.metrics["Dice_WT"] for run in folds]
    assert all(len(client.get_metric_history(run.info.run_id, "train/loss")) == 1 for run in folds)
    assert parent.data.metrics["cv_mean/Dice_WT"] == pytest.approx(np.mean(values))
    assert parent.data.metrics["cv_std/Dice_WT"] == pytest.approx(np.std(values, ddof=1))
    assert parent.data.metrics["cv_min/HD95_WT"] == pytest.approx(9.0)


def test_lesionwise_metrics_are_summarised_with_a_figure(store_root, client) -> None:
    completed = run_sweep(store_root, "fold=0,1", "lesionwise=true")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    parent = client.get_run(read_parent_run_id(store_root / "sweep"))
    assert parent.data.metrics["cv_mean/LesionDice_WT"] == pytest.approx(0.45)
    assert parent.data.metrics["cv_mean/LesionHD95_WT"] == pytest.approx(99.5)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "cv_summary")}
    assert "cv_summary/cv_scores.png" in artifacts
    assert (store_root / "sweep" / "cv_scores.png").stat().st_size > 5000


def test_without_continue_on_failure_parent_is_not_left_running(store_root, client) -> None:
    completed = run_sweep(
        store_root, "fold=0,1", "fail_fold=0", "fail_precision=fp32",
        "hydra.callbacks.cv_summary.continue_on_failure=false",
    )  # fmt: skip
    assert completed.returncode == 1, completed.stdout + completed.stderr
    parent = client.get_run(read_parent_run_id(store_root / "sweep"))
    assert parent.info.status == "FAILED"
    assert "before its end" in parent.data.tags["error"]
    assert not (store_root / "sweep" / "cv_summary.md").exists()


def test_tracking_disabled_still_summarises(tmp_path) -> None:
    completed = run_sweep(
        tmp_path, "fold=0,1", "fail_fold=1", "fail_precision=fp32", "tracking.enabled=false"
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output
    assert not (tmp_path / "mlflow.db").exists()
    assert read_parent_run_id(tmp_path / "sweep") is None
    markdown = (tmp_path / "sweep" / "cv_summary.md").read_text()
    assert "(1/2 folds finished)" in markdown and "- fold 1: FAILED" in markdown
    assert "| Dice_WT | 0.5000 | – |" in markdown


def test_sigterm_of_the_sweep_kills_job_and_parent_runs(store_root, client) -> None:
    process = subprocess.Popen(
        [PYTHON, str(APP), "--multirun", f"hydra.sweep.dir={store_root / 'sweep'}",
         "fold=0,1", "sleep_seconds=60"],
        cwd=store_root,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        sleeping = store_root / "sweep" / "0_fold=0,sleep_seconds=60" / "sleeping"
        assert wait_for_file(sleeping, 60), list((store_root / "sweep").iterdir())
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0, output
    parent_id = read_parent_run_id(store_root / "sweep")
    parent = client.get_run(parent_id)
    assert parent.info.status == "KILLED", output
    (job,) = runs_by_kind(client, parent_id)[0]
    assert job.info.status == "KILLED" and "SIGTERM" in job.data.tags["error"]
    assert not (store_root / "sweep" / "1_fold=1,sleep_seconds=60").exists()
