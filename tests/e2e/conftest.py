"""Helpers for end-to-end runs of ``python -m unet3d.run`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None,
            ) -> subprocess.CompletedProcess:
    """Run the task runner as a user would, from ``cwd`` (its MLflow store and data live there)."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT),
                   **(env or {})}
    environment.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "unet3d.run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=environment)


def run_dirs(cwd: Path) -> list[Path]:
    """Output dirs of single runs under ``cwd/outputs``, oldest first."""
    return sorted(path.parent for path in (cwd / "outputs").glob("*/*/.hydra"))


def results(run_dir: Path) -> dict:
    """The job's results.json."""
    return json.loads((run_dir / "results.json").read_text())


def mlflow_client(cwd: Path):
    """A client on the default store that a run started in ``cwd`` writes to."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")


@pytest.fixture(scope="session")
def shared_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working folder whose synthetic debug data set is generated once for the session."""
    return tmp_path_factory.mktemp("workdir")
