"""Hyperparameter search: the objective a job returns, the cross_validate fold sweep's command,
the study bookkeeping (unet3d.tracking.study), and an Optuna study of the toy app through the
real Hydra Optuna sweeper (study run, failed trial, resume)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from _tracking_helpers import PYTHON, subprocess_env
from omegaconf import OmegaConf

from unet3d.errors import ConfigError
from unet3d.modes.cross_validate import fold_sweep_command, selected_folds
from unet3d.sweep_callback import _outermost
from unet3d.tracking.study import (
    STUDY_FILE,
    StudySettings,
    objective_value,
    optimized_metric_names,
    prepare_study,
    summarize_study,
    trial_number,
)

APP = Path(__file__).resolve().parent / "_sweep_app" / "app.py"


# ------------------------------------------------------------------------------ objective


def test_optimized_metric_names_accepts_a_name_or_a_list() -> None:
    assert optimized_metric_names(OmegaConf.create({})) is None
    assert optimized_metric_names(OmegaConf.create({"optimized_metric": None})) is None
    assert optimized_metric_names(OmegaConf.create({"optimized_metric": "Dice_WT"})) == (
        "Dice_WT",)
    cfg = OmegaConf.create({"optimized_metric": ["Dice_WT", "Dice_TC", "Dice_ET"]})
    assert optimized_metric_names(cfg) == ("Dice_WT", "Dice_TC", "Dice_ET")
    for bad in ([], 3, ["Dice_WT", 1]):
        with pytest.raises(ConfigError, match=r"^optimized_metric: expected"):
            optimized_metric_names(OmegaConf.create({"optimized_metric": bad}))


def test_objective_is_the_mean_of_the_named_metrics() -> None:
    metrics = {"Dice_WT": 0.9, "Dice_TC": 0.6, "Dice_ET": 0.3, "HD95_WT": 4.0}
    assert objective_value(metrics, ("Dice_WT", "Dice_TC", "Dice_ET")) == pytest.approx(0.6)
    assert objective_value(metrics, ("HD95_WT",)) == 4.0
    assert math.isnan(objective_value({**metrics, "Dice_ET": float("nan")},
                                      ("Dice_WT", "Dice_ET")))
    with pytest.raises(ConfigError, match=r"^optimized_metric: metric\(s\) Dice_XX not in the "
                                          r"job's results \(it has: Dice_ET, Dice_TC"):
        objective_value(metrics, ("Dice_WT", "Dice_XX"))


# ------------------------------------------------------------------------ cross_validate


def _cv_cfg(**mode) -> OmegaConf:
    return OmegaConf.create({"num_folds": 3, "mode": {"name": "cross_validate",
                                                      "fold_mode": "train_and_evaluate",
                                                      "folds": None, "fold_overrides": [],
                                                      **mode}})


def test_selected_folds_default_to_every_fold_and_are_checked() -> None:
    assert selected_folds(_cv_cfg()) == [0, 1, 2]
    assert selected_folds(_cv_cfg(folds=[2, 0])) == [2, 0]
    from tests.test_config import compose_config
    from unet3d.config import validate

    cfg = compose_config("mode=cross_validate", "num_folds=3")
    for bad in ([], [0, 0], [3], [-1], ["0"], [True]):  # checked by the config
        OmegaConf.update(cfg, "mode.folds", bad, merge=False)
        with pytest.raises(ConfigError, match=r"^mode.folds: expected null or distinct folds"):
            validate(cfg)


def test_fold_sweep_command_keeps_the_trial_overrides_and_nests_under_the_study(
        tmp_path: Path) -> None:
    folds_dir = tmp_path / "0_lr=0.1,x=[1,2]" / "folds"
    overrides = ["+hparams_search=unet3d_optuna", "training.learning_rate=0.001", "fold=1",
                 "mode=cross_validate", "optimized_metric=Dice_WT", "data.crop_size=[32,32,32]",
                 "hydra/launcher=joblib", "hydra.sweeper.n_trials=3", "resume=true",
                 "mode.folds=[0,1]", "+mode.fold_overrides=[]"]  # the mode's own: not passed on
    command = fold_sweep_command(_cv_cfg(fold_overrides=["hydra/launcher=joblib"]), overrides,
                                 folds_dir, [0, 1], "abc123", "trial-4", "optuna_trial")
    assert command[:4] == [sys.executable, "-m", "unet3d.run", "--multirun"]
    assert command[4:] == [
        "training.learning_rate=0.001", "data.crop_size=[32,32,32]", "resume=true",
        "mode=train_and_evaluate", "fold=0,1", f"hydra.sweep.dir='{folds_dir}'",
        "hydra.sweep.subdir=fold${fold}", "++hydra.callbacks.cv_summary.run_name=trial-4",
        "++hydra.callbacks.cv_summary.run_kind=optuna_trial",
        "++hydra.callbacks.cv_summary.parent_run_id=abc123", "hydra/launcher=joblib"]
    # The quoted sweep dir is one value of Hydra's override grammar.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (parsed,) = OverridesParser.create().parse_overrides([command[9]])
    assert parsed.value() == str(folds_dir)


def test_outermost_leaves_out_the_fold_jobs_of_a_cross_validate_job(tmp_path: Path) -> None:
    records = [{"job_dir": str(tmp_path / "0_a")}, {"job_dir": str(tmp_path / "0_a/folds/fold0")},
               {"job_dir": str(tmp_path / "1_b")}, {"job_dir": str(tmp_path / "10_c")}]
    assert [r["job_dir"] for r in _outermost(records)] == [
        str(tmp_path / "0_a"), str(tmp_path / "1_b"), str(tmp_path / "10_c")]


# ------------------------------------------------------------------------------ the study


def _sweep_config(storage: str, seed: object = 7) -> OmegaConf:
    return OmegaConf.create({"hydra": {"sweeper": {
        "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        "study_name": "s", "storage": storage, "sampler": {"seed": seed}}}})


def test_prepare_study_reseeds_a_resumed_study_and_numbers_its_trials(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    config = _sweep_config(storage)
    assert prepare_study(config, tmp_path / "sweep1") == 0
    assert config.hydra.sweeper.sampler.seed == 7  # a new study keeps its seed
    assert trial_number(tmp_path / "sweep1", 2) == 2

    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, value=0.3, distributions={
        "lr": optuna.distributions.FloatDistribution(0.0, 1.0)}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    config = _sweep_config(storage)
    OmegaConf.set_readonly(config.hydra, True)
    assert prepare_study(config, tmp_path / "sweep2") == 2
    assert config.hydra.sweeper.sampler.seed == 9
    assert trial_number(tmp_path / "sweep2", 1) == 3
    assert (tmp_path / "sweep2" / STUDY_FILE).is_file()
    assert trial_number(tmp_path / "elsewhere", 1) is None

    summary = summarize_study(StudySettings("s", storage))
    assert summary.counts == {"COMPLETE": 1, "FAIL": 1}
    assert (summary.best_number, summary.best_value, summary.best_params) == (0, 0.3,
                                                                              {"lr": 0.1})
    assert summary.trials_csv.splitlines()[0].endswith(",lr")
    assert "Best trial 0: value 0.3" in summary.markdown()


# ------------------------------------------------------- a study of the toy app (subprocess)


def _study_sweep(root: Path, sweep: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, str(APP), "--multirun", f"hydra.sweep.dir={root / sweep}", "hydra/sweeper=optuna",
         "hydra.sweeper.study_name=toy", f"hydra.sweeper.storage=sqlite:///{root / 'optuna.db'}",
         "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=1",
         "hydra.sweeper.max_failure_rate=1.0", "lr=interval(0.0,1.0)", "return_objective=true",
         *extra],
        cwd=root, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_toy_study_failed_trial_study_run_and_resume(store_root: Path, client) -> None:
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # Job 1 raises: its trial is a FAIL and the study goes on to job 2.
    first = _study_sweep(store_root, "sweep1", "hydra.sweeper.n_trials=3", "fail_job=1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    storage = f"sqlite:///{store_root / 'optuna.db'}"
    trials = optuna.load_study(study_name="toy", storage=storage).get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE", "FAIL", "COMPLETE"]

    (study_run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`unet3d.run_kind` = 'optuna_study'")
    assert study_run.info.status == "FINISHED" and study_run.info.run_name == "optuna-toy"
    assert study_run.data.tags["unet3d.optuna_study"] == f"toy@{storage}"
    trial_runs = client.search_runs([study_run.info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{study_run.info.run_id}'")
    assert sorted(run.info.status for run in trial_runs) == ["FAILED", "FINISHED", "FINISHED"]
    best = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert study_run.data.metrics["optuna/best_value"] == pytest.approx(best.value)
    assert study_run.data.tags["best.lr"] == str(best.params["lr"])
    assert study_run.data.metrics["optuna/trials_fail"] == 1.0
    assert "cv_mean/Dice_WT" not in study_run.data.metrics  # no fold summary for a study

    # A rerun (another sweep dir) adds trials to the same study and nests them under the same
    # study run; its sampler is reseeded (seed 1 + 3 trials), so it does not repeat trial 0.
    second = _study_sweep(store_root, "sweep2", "hydra.sweeper.n_trials=2")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    trials = optuna.load_study(study_name="toy", storage=storage).get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE", "FAIL", "COMPLETE",
                                                      "COMPLETE", "COMPLETE"]
    assert trials[3].params != trials[0].params
    (again,) = client.search_runs([study_run.info.experiment_id],
                                  "tags.`unet3d.run_kind` = 'optuna_study'")
    assert again.info.run_id == study_run.info.run_id and again.info.status == "FINISHED"
    assert again.data.metrics["optuna/trials_complete"] == 4.0
    assert len(client.search_runs([study_run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{study_run.info.run_id}'")) == 5


def test_an_optuna_too_old_for_sqlalchemy_2_is_refused_with_the_fix(monkeypatch) -> None:
    optuna = pytest.importorskip("optuna")
    from unet3d.tracking.study import require_optuna

    assert require_optuna() is optuna
    monkeypatch.setattr(optuna, "__version__", "2.10.1")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper: Optuna 2.10.1 cannot use an SQLite "
                                          r"storage with SQLAlchemy 2; pip install 'optuna>=4"):
        require_optuna()
