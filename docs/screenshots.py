"""Screenshots of MLflow's UI as a user sees it: the runs page and a sweep's parent run.

Runs a small cross-validation sweep (``debug=fast``, 2 folds) in a work folder unless that
folder already holds one, starts ``mlflow ui`` on loopback against its store, opens the pages
in headless Chromium (``apt-get install chromium``) and saves PNGs::

    python docs/screenshots.py --workdir /tmp/unet3d-shots --out docs/images

Writes ``<out>/mlflow_runs.png`` (the experiment's runs page, with the Dataset column) and
``<out>/mlflow_sweep_parent.png`` (the sweep's parent run) and, when that parent run holds
lesion-wise means (a sweep on BraTS 2023+ labels, e.g. ``--override data=synthetic_brats2023``),
``<out>/mlflow_parent_lesionwise.png``: its metrics filtered to ``cv_mean/Lesion`` (typed into
the run page's metric search by Playwright). The ``mlflow ui`` process is always
stopped. Exit status 1 with one line when Chromium is missing or a page cannot be captured.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger("screenshots")
#: The run page's metric search for the lesion-wise screenshot.
LESIONWISE_FILTER = "cv_mean/Lesion"
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_sweep(workdir: Path, overrides: list[str]) -> None:
    """A 2-fold ``debug=fast`` sweep in ``workdir`` (its MLflow store: ``mlflow.db`` there)."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "unet3d.run", "--multirun", "debug=fast", "num_folds=2",
               "fold=0,1", *overrides]
    log.info("running %s in %s", " ".join(command[2:]), workdir)
    subprocess.run(command, cwd=workdir, env=environment, check=True)


def sweep_pages(store_uri: str) -> tuple[str, str, bool]:
    """URL fragments of the runs page and of the newest sweep parent run in the store, and
    whether that parent run holds lesion-wise cross-validation means."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store_uri)
    parents = client.search_runs(
        [experiment.experiment_id for experiment in client.search_experiments()],
        filter_string="tags.`unet3d.sweep_dir` != ''", order_by=["attributes.start_time DESC"],
        max_results=1)
    if not parents:
        raise SystemExit(f"screenshots: no sweep parent run in {store_uri}")
    parent = parents[0]
    experiment_id = parent.info.experiment_id
    # The links a run's last line prints: with MLflow 3's model-training sidebar (without the
    # query MLflow 3.17-3.18 open the GenAI one, mlflow/mlflow#24498).
    from unet3d.tracking.ui_links import run_url, runs_url

    return (runs_url("", experiment_id).lstrip("/"),
            run_url("", experiment_id, parent.info.run_id).lstrip("/"),
            any(name.startswith(LESIONWISE_FILTER) for name in parent.data.metrics))


def capture(chromium: str, url: str, path: Path, width: int, height: int) -> None:
    """Save a PNG of ``url`` after the single-page app had 20 s of (virtual) time to load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--disable-dev-shm-usage", f"--window-size={width},{height}",
         "--virtual-time-budget=20000", f"--screenshot={path}", url],
        check=True, capture_output=True, timeout=180)
    if not path.is_file() or path.stat().st_size == 0:
        raise SystemExit(f"screenshots: Chromium wrote no image for {url}")
    log.info("saved %s (%s)", path, url)


def capture_filtered(chromium: str, url: str, path: Path, width: int, height: int) -> None:
    """Save a PNG of the run page ``url`` with its metrics table filtered to
    ``LESIONWISE_FILTER`` (needs ``playwright``, from the ``test`` extra)."""
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=flags)
        try:
            page = browser.new_context(viewport={"width": width, "height": height}).new_page()
            page.goto(url)
            page.get_by_text(LESIONWISE_FILTER).first.wait_for(timeout=120_000)
            page.get_by_placeholder("Search metrics").first.fill(LESIONWISE_FILTER)
            page.wait_for_timeout(1500)
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path))
        finally:
            browser.close()
    log.info("saved %s (%s)", path, url)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, make the sweep if needed, serve the UI, capture both pages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unet3d-screenshots"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--override", action="append", default=[],
                        help="an override for the sweep (repeatable), e.g. "
                             "data=synthetic_brats2023")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")
    if chromium is None:
        log.error("screenshots: no Chromium on PATH (apt-get install chromium)")
        return 1
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "mlflow.db"
    if not store.is_file():
        run_sweep(workdir, args.override)
    store_uri = f"sqlite:///{store}"
    runs_page, parent_page, lesionwise = sweep_pages(store_uri)
    port = _free_port()
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("MLFLOW_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri,
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    log.error("screenshots: mlflow ui did not start on port %d", port)
                    return 1
                time.sleep(0.5)
        capture(chromium, base + runs_page, args.out / "mlflow_runs.png", args.width,
                args.height)
        capture(chromium, base + parent_page, args.out / "mlflow_sweep_parent.png",
                args.width, args.height)
        if lesionwise:
            capture_filtered(chromium, base + parent_page,
                             args.out / "mlflow_parent_lesionwise.png", args.width, args.height)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
