"""Shared fixtures: a pre-migrated empty MLflow SQLite store copied into each test's tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create the MLflow schema once (migrations take seconds); tests copy the file."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def store_root(tmp_path: Path, _empty_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root dir holding a fresh `mlflow.db`; MLFLOW_TRACKING_URI points at it."""
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture()
def tracking_cfg(store_root: Path) -> dict:
    """tracking config group as the runner passes it (uri set explicitly)."""
    return {
        "enabled": True,
        "uri": f"sqlite:///{store_root / 'mlflow.db'}",
        "experiment_name": "unet3d-test",
        "artifact_location": None,
        "log_model": True,
    }


@pytest.fixture()
def client(tracking_cfg: dict):
    """An MlflowClient on the test's store."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_cfg["uri"])
