"""The links a run's last log line prints open MLflow's UI on the training runs, in a real
headless Chromium (Playwright driving Debian's ``chromium``) against a real ``mlflow ui`` on a
real SQLite store: a sweep's parent run with its nested folds in the runs table, the
model-training sidebar (not MLflow 3's GenAI overview, mlflow/mlflow#24498), and the run page.

CI installs the browser (``.ci/install_extras.sh``: Debian's chromium; ``playwright`` is in the
``test`` extra); where either is missing the test is skipped with the reason.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port
from unet3d.tracking.tracker import Tracker

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Flags for a root user on a machine without a display or outside network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]
LINKS = re.compile(r"ended FINISHED: (\S+) \(the experiment's runs: (\S+)\)")


def _store_with_a_sweep(root: Path, address: str, caplog: pytest.LogCaptureFixture
                        ) -> tuple[str, str]:
    """A parent run with two nested fold runs, as a sweep leaves them; the parent's links."""
    tracking = {"enabled": True, "uri": f"sqlite:///{root / 'mlflow.db'}",
                "experiment_name": "unet3d-browser", "ui_url": address}
    parent = Tracker(tracking, root)
    parent_id = parent.start(None, root / "sweep", run_name="cv-browser-sweep",
                             tags={"unet3d.run_kind": "cv_parent"},
                             run_id_file="mlflow_parent_run_id")
    for fold in range(2):
        job = Tracker(tracking, root)
        job.start(None, root / f"fold{fold}", run_name=f"train_and_evaluate-fold{fold}",
                  parent_run_id=parent_id)
        job.log_metrics({"eval/Dice_WT": 0.5 + fold / 10})
        job.end()
    parent.log_metrics({"cv_mean/eval/Dice_WT": 0.55})
    with caplog.at_level(logging.INFO, logger="unet3d.tracking.tracker"):
        parent.end()
    found = LINKS.search(caplog.records[-1].getMessage())
    assert found, caplog.records[-1].getMessage()
    run_link, runs_link = found.groups()
    assert run_link.startswith(
        f"{address}/#/experiments/{parent.experiment_id}/runs/{parent_id}"), run_link
    return run_link, runs_link


def _serve_ui(root: Path, port: int) -> subprocess.Popen:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("MLFLOW_")}
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job workers to start
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
         f"sqlite:///{root / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow ui exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    pytest.fail("mlflow ui did not answer /health in 240 s")


def test_the_printed_links_open_the_training_runs(tmp_path: Path, caplog) -> None:
    if CHROMIUM is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium; .ci/install_extras.sh)")
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the test extra has it)")
    port = free_port()
    run_link, runs_link = _store_with_a_sweep(tmp_path, f"http://127.0.0.1:{port}", caplog)
    server = _serve_ui(tmp_path, port)
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=CHROMIUM_FLAGS)
            try:
                # A new user: a fresh browser profile (MLflow keeps its toggle in localStorage).
                page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
                page.goto(runs_link)
                parent = page.get_by_text("cv-browser-sweep").first
                parent.wait_for(timeout=120_000)
                body = page.locator("body").inner_text()
                # The model-training sidebar, not the GenAI one (Judges, Playground, ...).
                assert "Model registry" in body and "Judges" not in body, body
                assert "Send your first trace" not in body, body
                assert "3 matching runs" in body, body  # the parent and its two folds
                # Expand the parent: its nested fold runs.
                page.locator("div.ag-cell", has_text="cv-browser-sweep").last \
                    .locator("button").first.click()
                for fold in range(2):
                    page.get_by_text(f"train_and_evaluate-fold{fold}").first.wait_for(
                        timeout=60_000)

                page = browser.new_context().new_page()
                page.goto(run_link)
                page.get_by_text("cv_mean/eval/Dice_WT").first.wait_for(timeout=120_000)
                body = page.locator("body").inner_text()
                assert "cv-browser-sweep" in body and run_link.split("/runs/")[1][:32] in body
                assert "Model registry" in body and "Send your first trace" not in body
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
