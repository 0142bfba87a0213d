"""The links into MLflow's UI that a run's last line prints (unet3d.tracking.ui_links); the
browser test (test_mlflow_ui_browser.py) checks what they open."""

from __future__ import annotations

import logging

from unet3d.tracking.tracker import Tracker
from unet3d.tracking.ui_links import ui_address, ui_links_line


def test_the_address_of_the_ui() -> None:
    assert ui_address({"ui_url": "http://ui:8080/"}, "sqlite:///x.db") == "http://ui:8080"
    assert ui_address({}, "https://mlflow.example.org/") == "https://mlflow.example.org"
    assert ui_address(None, "sqlite:////data/mlflow.db") == "http://127.0.0.1:5000"


def test_the_line_links_the_run_and_the_experiments_runs() -> None:
    assert ui_links_line({}, "sqlite:////data/mlflow.db", "3", "abc") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning "
        "(the experiment's runs: http://127.0.0.1:5000/#/experiments/3/runs?workflowType="
        "machine_learning); start the UI with: mlflow ui --backend-store-uri "
        "sqlite:////data/mlflow.db")
    assert ui_links_line({}, "http://h:5000", "3", "abc") == (
        "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning (the "
        "experiment's runs: http://h:5000/#/experiments/3/runs?workflowType=machine_learning)")


def test_the_last_line_of_a_run_is_its_links(tracking_cfg, store_root, tmp_path, caplog) -> None:
    tracker = Tracker(tracking_cfg, store_root)
    run_id = tracker.start(None, tmp_path / "job", run_name="job")
    with caplog.at_level(logging.INFO):
        tracker.end("FAILED", "boom")
    assert caplog.records[-1].getMessage() == (
        f"MLflow: run {run_id} ended FAILED: "
        + ui_links_line(tracking_cfg, tracking_cfg["uri"], tracker.experiment_id, run_id))
