"""The data set of a job as an MLflow run input (the runs table's Dataset column).

``log_dataset_input(tracker, prepared, cfg)`` logs one ``mlflow.data.meta_dataset.MetaDataset``
per job: name ``data.name``, source the raw folder, and a digest of the preprocessed records
(record names and sizes plus the preprocessing manifest's label convention and per-case record
entries), so runs on other data (another data set, other preprocessing, another label
convention) show another digest. The fold's split is the input's context and tags: MLflow's
``mlflow.data.context`` (``training`` for the training modes, ``evaluation`` otherwise) plus
``fold``, ``num_folds``, ``train_cases``, ``heldout_cases`` and a digest of the fold's two case
lists. Cheap: files are stat-ed, the records are never read.

MLflow docs: ``mlflow.log_input`` / ``MlflowClient.log_inputs``; the digest is ours (MetaDataset
would otherwise hash only name and source).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet3d.tracking.store import retry

logger = logging.getLogger(__name__)

#: The preprocessing manifest in a preprocessed folder (``unet3d.data.preprocess``).
MANIFEST_NAME = "preprocess_manifest.json"
#: Modes whose data set input is the training context (the others evaluate).
TRAINING_MODES = ("train", "train_and_evaluate")
#: Length of the hex digests shown in the UI.
DIGEST_LENGTH = 16


def records_digest(preprocessed_dir: str | Path, record_files: Sequence[str | Path]) -> str:
    """A digest of the preprocessed records: names, sizes and the manifest's record entries.

    Args:
        preprocessed_dir: the folder of the records and ``preprocess_manifest.json``.
        record_files: every case's record (``PreparedData.train_files + eval_files`` or the
            records of ``case_ids``); missing files count with size -1.

    Returns:
        The first 16 hex characters of a SHA-256 over the sorted (name, size) pairs, the
        manifest's ``version`` and ``convention`` and its per-case ``record_size``, ``shape``
        and ``has_label`` (not the raw files' modification times: regenerating identical
        data keeps the digest).
    """
    hasher = hashlib.sha256()
    for path in sorted(Path(item) for item in record_files):
        size = path.stat().st_size if path.is_file() else -1
        hasher.update(f"{path.name}\t{size}\n".encode())
    manifest_path = Path(preprocessed_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict):
        cases = manifest.get("cases") if isinstance(manifest.get("cases"), dict) else {}
        summary = {
            "version": manifest.get("version"),
            "convention": manifest.get("convention"),
            "cases": {
                case: {key: entry.get(key) for key in ("record_size", "shape", "has_label")}
                for case, entry in sorted(cases.items()) if isinstance(entry, dict)
            },
        }
        hasher.update(json.dumps(summary, sort_keys=True, default=str).encode())
    return hasher.hexdigest()[:DIGEST_LENGTH]


def split_digest(train_cases: Sequence[str], heldout_cases: Sequence[str]) -> str:
    """A digest of one fold's split: the sorted train and held-out case ids (16 hex chars)."""
    text = json.dumps({"train": sorted(train_cases), "heldout": sorted(heldout_cases)})
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


def _case_ids(files: Sequence[str | Path]) -> list[str]:
    from unet3d.data.tfrecord import case_id_of

    return [case_id_of(item) for item in files]


def dataset_input(prepared: Any, cfg: Any) -> tuple[Any, str, dict[str, str]]:
    """The MetaDataset, its context and its input tags for a job's prepared data.

    Args:
        prepared: ``unet3d.data.prepare.PreparedData`` (``preprocessed_dir``, ``case_ids``,
            ``train_files``, ``eval_files``, ``raw_dir``, ``split_file``).
        cfg: the job's config (``data.name``, ``fold``, ``num_folds``, ``mode.name``).

    Returns:
        (``MetaDataset(source=raw folder, name=data.name, digest=records_digest)``,
        ``"training"`` or ``"evaluation"``, tags with the fold's split).
    """
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    from unet3d.data.tfrecord import record_path

    preprocessed_dir = Path(prepared.preprocessed_dir)
    records = [record_path(preprocessed_dir, case) for case in prepared.case_ids]
    raw_dir = prepared.raw_dir if prepared.raw_dir is not None else preprocessed_dir
    dataset = MetaDataset(
        source=LocalArtifactDatasetSource(str(Path(raw_dir).resolve())),
        name=str(cfg.data.name),
        digest=records_digest(preprocessed_dir, records),
    )
    mode = str(cfg.mode.name) if cfg.get("mode") is not None else ""
    context = "training" if mode in TRAINING_MODES else "evaluation"
    train_cases, heldout_cases = _case_ids(prepared.train_files), _case_ids(prepared.eval_files)
    tags = {
        "fold": str(cfg.fold),
        "num_folds": str(cfg.num_folds),
        "cases": str(len(prepared.case_ids)),
        "train_cases": str(len(train_cases)),
        "heldout_cases": str(len(heldout_cases)),
        "split_digest": split_digest(train_cases, heldout_cases),
        "preprocessed_dir": str(preprocessed_dir),
    }
    if prepared.split_file is not None:
        tags["split_file"] = str(prepared.split_file)
    return dataset, context, tags


def log_dataset_input(tracker: Any, prepared: Any, cfg: Any) -> bool:
    """Log the job's data set as an input of its MLflow run (no-op when not running).

    Like the tracker's logging calls it never raises: a failure is logged at ERROR level and
    counted in ``tracker.tracking_errors``.

    Args:
        tracker: the job's ``unet3d.tracking.tracker.Tracker`` (started).
        prepared: the fold's ``PreparedData`` (see ``dataset_input``).
        cfg: the job's config.

    Returns:
        True when the input was logged.
    """
    if not getattr(tracker, "running", False):
        return False
    try:
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset, context, tags = dataset_input(prepared, cfg)
        input_tags = [InputTag(key=key, value=value) for key, value in tags.items()]
        input_tags.append(InputTag(key=MLFLOW_DATASET_CONTEXT, value=context))
        entity = DatasetInput(dataset=dataset._to_mlflow_entity(), tags=input_tags)
        # Two jobs of a parallel sweep may insert the same data set row at once (MLflow checks,
        # then inserts): the second insert fails on the UNIQUE constraint; its retry finds the row.
        retry(lambda: tracker.client.log_inputs(str(tracker.run_id), datasets=[entity]),
              "log dataset input", also=("unique constraint failed: datasets",))
    except Exception:  # noqa: BLE001 - tracking must not kill training
        tracker.tracking_errors += 1
        logger.exception("MLflow: logging the data set input failed for run %s", tracker.run_id)
        return False
    logger.info("MLflow: data set %s (digest %s, %s) logged as an input of run %s",
                dataset.name, dataset.digest, context, tracker.run_id)
    return True
