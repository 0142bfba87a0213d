"""Direct links into MLflow's UI: a job's run and its experiment's training runs.

MLflow 3's UI opens an experiment clicked in its list on the GenAI "Overview" page (traces,
latency, errors) whatever the experiment's ``mlflow.experimentKind``: its sidebar toggle lives
in the browser's ``localStorage`` with GenAI as default (mlflow/mlflow#24498; seen on MLflow
3.17.2 and 3.18.0). A link to the runs view with the query ``workflowType=machine_learning``
opens the training runs with the model-training sidebar (the route and the query are those of
MLflow 3.18's UI: ``#/experiments/<id>/runs[/<run id>]?workflowType=machine_learning``).
Each run's last log line prints both links (``Tracker.end``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Where ``mlflow ui`` / ``mlflow server`` listen unless told otherwise (``--host 127.0.0.1
#: --port 5000``).
MLFLOW_UI_ADDRESS = "http://127.0.0.1:5000"
#: The query that puts MLflow's UI sidebar on "Model training" (MLflow >= 3.x).
MODEL_TRAINING_QUERY = "workflowType=machine_learning"


def ui_address(tracking_cfg: Mapping[str, Any] | None, tracking_uri: str) -> str:
    """The UI's address: ``tracking.ui_url``; else an ``http(s)://`` store itself; else
    ``MLFLOW_UI_ADDRESS`` (where ``mlflow ui`` on the local store listens)."""
    configured = (tracking_cfg or {}).get("ui_url")
    if configured:
        return str(configured).rstrip("/")
    if tracking_uri.lower().startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return MLFLOW_UI_ADDRESS


def runs_url(address: str, experiment_id: str) -> str:
    """The experiment's training runs (a sweep's parent run with its nested folds)."""
    return f"{address}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"


def run_url(address: str, experiment_id: str, run_id: str) -> str:
    """One run's page."""
    return f"{address}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_QUERY}"


def ui_links_line(tracking_cfg: Mapping[str, Any] | None, tracking_uri: str,
                  experiment_id: str, run_id: str) -> str:
    """``<run url> (the experiment's runs: <runs url>)``, plus how to start the UI on a local
    store."""
    address = ui_address(tracking_cfg, tracking_uri)
    line = (f"{run_url(address, experiment_id, run_id)} (the experiment's runs: "
            f"{runs_url(address, experiment_id)})")
    if not tracking_uri.lower().startswith(("http://", "https://")) and \
            not (tracking_cfg or {}).get("ui_url"):
        line += f"; start the UI with: mlflow ui --backend-store-uri {tracking_uri}"
    return line
