"""Fold sweeps through Hydra's submitit launcher (issue 15, part 4).

``hydra/launcher=submitit_local`` runs each fold in a process of its own, started by submitit
(not by the sweep's process): the parent run, the nested fold runs and the cross-validation
summary are the same as with the basic and joblib launchers. ``hydra/launcher=unet3d_slurm`` is
the SLURM preset (conf/hydra/launcher/unet3d_slurm.yaml); without a cluster only its
composition is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import mlflow_client, results, run_cli

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


@pytest.mark.slow
def test_submitit_local_fold_sweep_has_parent_run_and_summary(tmp_path: Path) -> None:
    # fold=2 with num_folds=2 is refused by the job: a failed fold, cheaply.
    result = run_cli("--multirun", "debug=fast", "num_folds=2", "fold=0,1,2",
                     "training.max_steps=2", "tracking.log_model=false",
                     "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
                     cwd=tmp_path, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "Sweep FAILED (failed folds: all fold 2: FAILED)" in output

    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    client = mlflow_client(tmp_path)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "tags.`unet3d.run_kind` = 'cv_parent'")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["unet3d.launcher"] == "LocalLauncher"
    assert parent.data.tags["cv.failed_folds"] == "2"
    jobs = client.search_runs(experiments, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(run.data.tags["fold"] for run in jobs) == ["0", "1"]
    assert all(run.info.status == "FINISHED" for run in jobs)

    # Each job ran in a process submitit started (its logs and pickled result are there).
    submitit_logs = list((sweep_dir / ".submitit").glob("*/*_result.pkl"))
    assert len(submitit_logs) == 3
    # The summary: the finished folds' metrics, the refused fold named with its error.
    for run in jobs:
        record = results(Path(run.data.tags["output_dir"]))
        assert record["mlflow_run_id"] == run.info.run_id
    dice = [run.data.metrics["Dice_WT"] for run in jobs]
    assert parent.data.metrics["cv_mean/Dice_WT"] == pytest.approx(sum(dice) / 2)
    assert parent.data.metrics["cv_folds/finished"] == 2
    assert parent.data.metrics["cv_folds/failed"] == 1
    markdown = (sweep_dir / "cv_summary.md").read_text()
    assert "(2/3 folds finished)" in markdown and "fold 2: FAILED — fold: must be in" in markdown
    refused = [json.loads(path.read_text()) for path in sweep_dir.glob("2_*/results.json")]
    assert [record["status"] for record in refused] == ["FAILED"]


def test_slurm_preset_composes(tmp_path: Path) -> None:
    result = run_cli("hydra/launcher=unet3d_slurm", "hydra.launcher.partition=gpu",
                     "--cfg", "hydra", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    from omegaconf import OmegaConf

    launcher = OmegaConf.create(result.stdout).hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_task == 1
    assert launcher.timeout_min == 720 and launcher.tasks_per_node == 1
