"""The run identity record: built from a config, written once, compared on resume."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from unet3d.runs.identity import (
    IDENTITY_FILE,
    RunIdentity,
    cases_fingerprint,
    read_identity,
    record_cases,
)


def _config(**changes) -> OmegaConf:
    cfg = OmegaConf.create({
        "fold": 0, "num_folds": 5, "seed": 42,
        "data": {"name": "brats2019", "generate": False, "raw_dir": "/data/BraTS2019"},
        "model": {"name": "unet3d", "base_filters": 8, "num_levels": 4},
        "precision": {"name": "fp32", "policy": "float32"},
        "mode": {"name": "train"},
    })
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_from_config_records_the_experiment() -> None:
    identity = RunIdentity.from_config(_config())
    assert (identity.fold, identity.num_folds, identity.seed) == (0, 5, 42)
    assert identity.data["name"] == "brats2019"
    assert identity.data["raw_dir"] == "/data/BraTS2019"
    assert identity.data["synthetic"] is None and identity.data["cases"] is None
    assert identity.model == {"name": "unet3d", "base_filters": 8, "num_levels": 4}
    assert identity.precision == {"name": "fp32", "policy": "float32"}
    assert identity.mode == "train"


def test_synthetic_data_is_identified_by_its_generator_settings() -> None:
    synthetic = {"num_cases": 10, "shape": [32, 32, 32], "spacing": [1.0, 1.0, 1.0],
                 "seed": 2019, "layout": "flat"}
    first = RunIdentity.from_config(_config(**{"data.generate": True, "data.raw_dir": None,
                                               "data.synthetic": synthetic}))
    other = RunIdentity.from_config(_config(**{"data.generate": True, "data.raw_dir": None,
                                               "data.synthetic": {**synthetic, "seed": 7}}))
    assert first.data["synthetic"] and first.data["synthetic"] != other.data["synthetic"]
    assert any(item.startswith("data.synthetic") for item in first.differences(other))


def test_differences_name_each_identifying_key() -> None:
    recorded = RunIdentity.from_config(_config())
    assert recorded.differences(RunIdentity.from_config(_config())) == []
    changed = RunIdentity.from_config(_config(fold=1, seed=7, **{"model.base_filters": 4}))
    found = recorded.differences(changed)
    assert found[0] == "fold 0 of 5, not fold 1 of 5"
    assert "seed=42 (now 7)" in found
    assert "model.base_filters=8 (now 4)" in found
    # Precision and the data folder's path are recorded, not compared.
    moved = RunIdentity.from_config(_config(**{"precision.name": "amp",
                                               "data.raw_dir": "/elsewhere"}))
    assert recorded.differences(moved) == []


def test_case_list_compared_only_when_both_known() -> None:
    recorded = RunIdentity.from_config(_config())
    new = RunIdentity.from_config(_config())
    recorded.data["cases"] = cases_fingerprint(["a", "b"])
    assert recorded.differences(new) == []
    new.data["cases"] = cases_fingerprint(["b", "a"])  # order does not matter
    assert recorded.differences(new) == []
    new.data["cases"] = cases_fingerprint(["a", "b", "c"])
    assert recorded.differences(new)[0].startswith("case list fingerprint")
    assert recorded.differences(new, cases=False) == []


def test_write_read_and_record_cases_once(tmp_path: Path) -> None:
    identity = RunIdentity.from_config(_config())
    identity.write(tmp_path)
    record = json.loads((tmp_path / IDENTITY_FILE).read_text())
    assert record["format"] == 1 and record["created"]
    assert read_identity(tmp_path) == identity
    updated = record_cases(tmp_path, ["c2", "c1"])
    assert updated.data["cases"] == cases_fingerprint(["c1", "c2"])
    assert updated.data["num_cases"] == 2
    before = (tmp_path / IDENTITY_FILE).read_bytes()
    # Filled in once: a later call with another list leaves the record as it is.
    record_cases(tmp_path, ["x"])
    assert (tmp_path / IDENTITY_FILE).read_bytes() == before


def test_read_falls_back_to_the_hydra_config_of_older_runs(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(_config(fold=3), tmp_path / ".hydra" / "config.yaml")
    identity = read_identity(tmp_path)
    assert identity is not None and identity.fold == 3
    assert record_cases(tmp_path, ["a"]) is None  # no record file: nothing written
    assert not (tmp_path / IDENTITY_FILE).exists()


def test_unreadable_or_missing_record(tmp_path: Path, caplog) -> None:
    assert read_identity(tmp_path) is None
    (tmp_path / IDENTITY_FILE).write_text("{not json")
    assert read_identity(tmp_path) is None
    assert IDENTITY_FILE in caplog.text


def test_the_record_writes_the_tags_and_results_json(tmp_path: Path) -> None:
    """One record names the fold everywhere: the MLflow tags and run name, results.json, and a
    job folder without results.json (read_identity, the sweep's collect_job_results)."""
    from unet3d.runs.identity import read_job_result
    from unet3d.runs.results import collect_job_results

    record = RunIdentity.from_config(_config(fold=3))
    assert record.tags() == {"mode": "train", "fold": "3", "num_folds": "5", "precision": "fp32"}
    assert record.run_name == "train-fold3"
    job = tmp_path / "sweep" / "0_fold=3"
    record.write(job)
    record.write_result(job, "FINISHED", ["fold=3"], {"Dice_WT": 0.5, "bad": float("nan")},
                        mlflow_run_id="abc")
    result = read_job_result(job)
    assert (result["status"], result["fold"], result["metrics"]) == (
        "FINISHED", 3, {"Dice_WT": 0.5, "bad": None})
    killed = tmp_path / "sweep" / "1_fold=4"
    RunIdentity.from_config(_config(fold=4)).write(killed)
    assert [(r["status"], r["fold"]) for r in collect_job_results(tmp_path / "sweep")] == [
        ("FINISHED", 3), ("FAILED", 4)]
