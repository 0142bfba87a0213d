"""End-to-end Optuna study over cross-validation (issue 15, part 1), in real subprocesses.

``python -m unet3d.run --multirun hparams_search=unet3d_optuna`` on ``debug=fast`` with a
2-fold objective, checked through the MLflow client (study run -> trial runs -> fold runs, the
best trial on the study run) and through the Optuna storage (``optuna.load_study``); a rerun
adds trials to the same study and the same study run; a failing trial is an Optuna FAIL and the
study goes on.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, mlflow_client, run_cli

pytestmark = pytest.mark.slow
optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

STUDY = "e2e-study"
#: The study: 2 folds per trial, tiny shapes, two steps; crop and widths fixed (the smallest).
COMMON = ("debug=fast", "num_folds=2", "training.max_steps=2", "data.crop_size=[32,32,32]",
          "model.base_filters=4", f"hydra.sweeper.study_name={STUDY}")
#: Search-space keys left to Optuna by COMMON (conf/hparams_search/unet3d_optuna.yaml).
SEARCHED = {"training.learning_rate", "loss.name", "data.augment"}


def _search_group() -> str:
    """``hparams_search=`` once conf/config.yaml lists the group in its defaults, else ``+``."""
    text = (ROOT / "conf" / "config.yaml").read_text()
    listed = re.search(r"^\s*-\s*hparams_search\s*:", text, re.MULTILINE)
    return ("" if listed else "+") + "hparams_search=unet3d_optuna"


def _study(cwd: Path):
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{cwd / 'optuna.db'}")


def _runs(client, filter_string: str) -> list:
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments, filter_string=filter_string, max_results=500)


def _children(client, run_id: str) -> list:
    return _runs(client, f"tags.mlflow.parentRunId = '{run_id}'")


def _sweep(cwd: Path, *extra: str, trials: int):
    return run_cli("--multirun", _search_group(), *COMMON, f"hydra.sweeper.n_trials={trials}",
                   *extra, cwd=cwd, timeout=900)


def test_optuna_study_over_two_folds_resumes_and_survives_a_failed_trial(
        tmp_path: Path) -> None:
    # 1. Three trials, each trains and evaluates two folds.
    first = _sweep(tmp_path, trials=3)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    study = _study(tmp_path)
    trials = study.get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 3
    assert all(set(trial.params) == SEARCHED for trial in trials)
    assert all(0.0 <= trial.value <= 1.0 for trial in trials)

    client = mlflow_client(tmp_path)
    (study_run,) = _runs(client, "tags.`unet3d.run_kind` = 'optuna_study'")
    assert study_run.info.status == "FINISHED"
    assert study_run.info.run_name == f"optuna-{STUDY}"
    trial_runs = {run.data.tags["optuna.trial_number"]: run
                  for run in _children(client, study_run.info.run_id)}
    assert sorted(trial_runs) == ["0", "1", "2"]
    for trial in trials:
        run = trial_runs[str(trial.number)]
        assert run.info.status == "FINISHED"
        assert run.data.tags["unet3d.run_kind"] == "optuna_trial"
        assert run.info.run_name == f"trial-{trial.number}"
        # The trial's hyperparameters are the run's params; its value is the run's objective.
        for name, value in trial.params.items():
            assert run.data.params[name] == str(value), name
        metrics = run.data.metrics
        assert metrics["objective"] == pytest.approx(trial.value, rel=1e-12)
        folds = _children(client, run.info.run_id)
        assert sorted(fold.data.tags["fold"] for fold in folds) == ["0", "1"]
        assert all(fold.info.status == "FINISHED" and fold.data.tags["mode"] ==
                   "train_and_evaluate" for fold in folds)
        # objective = mean over folds of mean(Dice_WT, Dice_TC, Dice_ET) of each fold run.
        per_fold = [sum(fold.data.metrics[f"Dice_{r}"] for r in ("WT", "TC", "ET")) / 3
                    for fold in folds]
        assert trial.value == pytest.approx(sum(per_fold) / 2, rel=1e-9)
        for fold in folds:
            assert metrics[f"objective/fold{fold.data.tags['fold']}"] == pytest.approx(
                sum(fold.data.metrics[f"Dice_{r}"] for r in ("WT", "TC", "ET")) / 3)
        # The trial run also carries the fold sweep's cross-validation summary.
        assert metrics["cv_folds/finished"] == 2.0
        assert metrics["cv_mean/Dice_WT"] == pytest.approx(
            sum(fold.data.metrics["Dice_WT"] for fold in folds) / 2)
    # The study run ends with the best trial's value and parameters.
    best = study.best_trial
    assert study_run.data.metrics["optuna/best_value"] == pytest.approx(best.value, rel=1e-12)
    assert study_run.data.metrics["optuna/best_trial"] == best.number
    assert study_run.data.metrics["optuna/trials_complete"] == 3.0
    assert {key[5:]: value for key, value in study_run.data.tags.items()
            if key.startswith("best.")} == {name: str(value) for name, value in best.params.items()}
    assert "optuna/optuna_trials.csv" in {
        item.path for item in client.list_artifacts(study_run.info.run_id, "optuna")}

    # 2. A rerun of the same command adds a trial to the same study and the same study run,
    #    with new hyperparameters (the sampler is reseeded by the number of earlier trials).
    second = _sweep(tmp_path, trials=1)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    trials = _study(tmp_path).get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 4
    assert trials[3].params not in [trial.params for trial in trials[:3]]
    (study_run,) = _runs(client, "tags.`unet3d.run_kind` = 'optuna_study'")
    assert sorted(run.data.tags["optuna.trial_number"]
                  for run in _children(client, study_run.info.run_id)) == ["0", "1", "2", "3"]
    assert study_run.data.metrics["optuna/trials_complete"] == 4.0

    # 3. Failing trials (training.max_steps=0 is refused) are recorded as FAIL, the study goes
    #    on to the next trial; the sweep exits non-zero as no trial of this invocation finished.
    third = _sweep(tmp_path, "training.max_steps=0", trials=2)
    assert third.returncode == 1
    assert "training.max_steps" in third.stdout + third.stderr
    trials = _study(tmp_path).get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE"] * 4 + ["FAIL"] * 2
    (study_run,) = _runs(client, "tags.`unet3d.run_kind` = 'optuna_study'")
    assert study_run.data.metrics["optuna/trials_fail"] == 2.0
    assert study_run.data.metrics["optuna/best_value"] == pytest.approx(
        _study(tmp_path).best_value, rel=1e-12)
    sweep_dirs = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 3
    record = json.loads((sweep_dirs[-1] / "optuna_study.json").read_text())
    assert record["first_trial"] == 4 and record["seed"] == 42 + 4
    failed = [json.loads(path.read_text()) for path in sweep_dirs[-1].glob("*/results.json")]
    assert [item["status"] for item in failed] == ["FAILED", "FAILED"]
    assert not any(math.isnan(trial.value) for trial in trials[:4])
