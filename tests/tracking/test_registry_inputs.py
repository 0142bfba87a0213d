"""The job's data set as an MLflow run input, checked through the client on a real store."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from unet3d.data.prepare import PreparedData
from unet3d.tracking.datasets import log_dataset_input, records_digest
from unet3d.tracking.tracker import Tracker


def _prepared(tmp_path: Path, cases: int = 5, heldout: int = 2) -> PreparedData:
    raw = tmp_path / "raw"
    raw.mkdir()
    folder = tmp_path / "pre"
    folder.mkdir()
    ids = [f"case_{index:03d}" for index in range(cases)]
    for index, case in enumerate(ids):
        (folder / f"{case}.tfrecord").write_bytes(b"x" * (100 + index))
    manifest = {"version": 1, "convention": {"name": "brats2019"},
                "cases": {case: {"record_size": 100 + i, "shape": [8, 8, 8], "has_label": True,
                                 "sources": {"mtime": 123.0}} for i, case in enumerate(ids)}}
    (folder / "preprocess_manifest.json").write_text(json.dumps(manifest))
    files = [str(folder / f"{case}.tfrecord") for case in ids]
    split_file = folder / "splits_k2_seed42.json"
    return PreparedData(folder, ids, [], files[heldout:], files[:heldout], raw, split_file)


def _cfg(mode: str = "train_and_evaluate") -> object:
    return OmegaConf.create({"data": {"name": "synthetic"}, "fold": 1, "num_folds": 2,
                             "mode": {"name": mode}})


def test_dataset_input_shows_name_digest_source_and_split(
    tracking_cfg, store_root, client, tmp_path
) -> None:
    prepared = _prepared(tmp_path)
    tracker = Tracker(tracking_cfg, store_root)
    run_id = tracker.start(None, tmp_path / "job", run_name="job")
    assert log_dataset_input(tracker, prepared, _cfg())
    tracker.end()

    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "synthetic"
    assert dataset.digest == records_digest(prepared.preprocessed_dir,
                                            prepared.train_files + prepared.eval_files)
    assert json.loads(dataset.source)["uri"] == str((tmp_path / "raw").resolve())
    assert dataset.source_type == "local"
    tags = {tag.key: tag.value for tag in inputs[0].tags}
    assert tags["mlflow.data.context"] == "training"
    assert (tags["fold"], tags["num_folds"]) == ("1", "2")
    assert (tags["train_cases"], tags["heldout_cases"], tags["cases"]) == ("3", "2", "5")
    assert tags["split_file"].endswith("splits_k2_seed42.json")


def test_digest_follows_the_records_not_the_raw_mtimes(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    records = prepared.train_files + prepared.eval_files
    first = records_digest(prepared.preprocessed_dir, records)
    manifest_path = prepared.preprocessed_dir / "preprocess_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["cases"]["case_000"]["sources"] = {"mtime": 999.0}
    manifest_path.write_text(json.dumps(manifest))
    assert records_digest(prepared.preprocessed_dir, records) == first
    original = Path(records[0]).read_bytes()
    Path(records[0]).write_bytes(b"y" * 7)
    assert records_digest(prepared.preprocessed_dir, records) != first
    Path(records[0]).write_bytes(original)
    assert records_digest(prepared.preprocessed_dir, records) == first
    manifest["convention"] = {"name": "brats2023"}
    manifest_path.write_text(json.dumps(manifest))
    assert records_digest(prepared.preprocessed_dir, records) != first


def test_evaluation_context_and_inactive_tracker(tracking_cfg, store_root, client,
                                                 tmp_path) -> None:
    prepared = _prepared(tmp_path)
    assert not log_dataset_input(Tracker(tracking_cfg, store_root, enabled=False), prepared,
                                 _cfg())
    tracker = Tracker(tracking_cfg, store_root)
    run_id = tracker.start(None, tmp_path / "eval", run_name="eval")
    assert log_dataset_input(tracker, prepared, _cfg("evaluate"))
    tracker.end()
    tags = {t.key: t.value for t in client.get_run(run_id).inputs.dataset_inputs[0].tags}
    assert tags["mlflow.data.context"] == "evaluation"
