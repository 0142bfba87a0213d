"""The job's lifecycle (unet3d.modes.job.Job): start once, check the data, finish."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from unet3d.errors import ConfigError, RunFolderError
from unet3d.modes.job import Job, Runtime
from unet3d.runs.identity import IDENTITY_FILE, RESULTS_FILE, RunIdentity


class FakeTracker:
    """Records what the job asks of MLflow (the tracker is not running: no data-set input)."""

    run_id = "run-1"
    running = False

    def __init__(self) -> None:
        self.starts: list[dict] = []

    def start(self, cfg, output_dir, run_name, tags, parent_run_id) -> None:
        self.starts.append({"run_name": run_name, "tags": tags, "parent": parent_run_id})

    def log_params(self, params) -> None:
        self.params = params


def runtime(is_chief: bool = True) -> Runtime:
    device = SimpleNamespace(type="CPU", names=["cpu:0"], onednn="on (set by unet3d)")
    precision = SimpleNamespace(compute_dtype="bfloat16", variable_dtype="float32",
                                loss_scale=False, xla=False, params={"precision.cpu": "x"})
    context = SimpleNamespace(name="default", num_replicas=1, is_chief=is_chief)
    return Runtime(device, precision, context)


def job(tmp_path: Path, resuming: bool = False, num_classes: int = 4) -> tuple[Job, list]:
    cfg = OmegaConf.create({
        "fold": 1, "num_folds": 5, "seed": 42, "mode": {"name": "train"},
        "data": {"name": "synthetic"}, "paths": {"root_dir": str(tmp_path)},
        "model": {"name": "unet3d", "num_classes": num_classes},
        "loss": {"_target_": "unet3d.training.losses.SegmentationLoss"},
        "precision": {"name": "amp", "policy": "mixed"},
    })
    commits: list = []
    made = Job(cfg, runtime(), FakeTracker(), tmp_path / "run",
               record=RunIdentity.from_config(cfg), commit=lambda: commits.append(1),
               overrides=["fold=1"], resuming=resuming)
    return made, commits


def test_start_commits_records_and_starts_the_run_once(tmp_path: Path) -> None:
    started, commits = job(tmp_path)
    started.start()
    started.start()
    assert commits == [1] and len(started.tracker.starts) == 1
    (start,) = started.tracker.starts
    assert start["run_name"] == "train-fold1"
    assert {key: start["tags"][key] for key in ("fold", "precision", "compute_dtype", "onednn",
                                                "overrides")} == {
        "fold": "1", "precision": "amp", "compute_dtype": "bfloat16", "onednn": "on",
        "overrides": "fold=1"}
    assert "precision_policy" not in start["tags"]
    recorded = json.loads((tmp_path / "run" / IDENTITY_FILE).read_text())
    assert (recorded["fold"], recorded["precision"]["name"]) == (1, "amp")
    assert started.tracker.params == {"precision.cpu": "x"}
    started.finish({"Dice_WT": 0.7})
    result = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())
    assert (result["status"], result["fold"], result["mlflow_run_id"]) == ("FINISHED", 1, "run-1")


def test_check_data_records_the_cases_and_refuses_another_list_on_resume(
        tmp_path: Path) -> None:
    prepared = SimpleNamespace(case_ids=["a", "b"], preprocessed_dir=tmp_path, layout=None)
    first, _ = job(tmp_path)
    first.start()
    first.check_data(prepared)
    recorded = json.loads((tmp_path / "run" / IDENTITY_FILE).read_text())
    assert recorded["data"]["num_cases"] == 2 and recorded["data"]["convention"]
    resumed, _ = job(tmp_path, resuming=True)
    resumed.check_data(prepared)  # the same cases
    with pytest.raises(RunFolderError, match="another case list"):
        resumed.check_data(SimpleNamespace(case_ids=["a", "c"], preprocessed_dir=tmp_path,
                                           layout=None))
    wrong, _ = job(tmp_path, num_classes=3)
    with pytest.raises(ConfigError, match=r"^model.num_classes: the data set brats2019 has 4"):
        wrong.check_data(prepared)
