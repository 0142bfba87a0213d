#!/usr/bin/env bash
# The plug-ins that pip cannot resolve from setup.cfg's extras, into the active environment:
#
# - hydra-optuna-sweeper 1.3.0 (hparams_search=unet3d_optuna) declares optuna<3, but optuna 2.x
#   cannot open its SQLite storage with SQLAlchemy 2 (which MLflow 3 needs): it is installed
#   without its dependencies, next to the optuna>=4,<5 of the `test` / `hpo` extras, with which
#   the plug-in works unchanged (tests/e2e/test_optuna_e2e.py).
# - Horovod 0.28.1, built against the installed TensorFlow (.ci/install_horovod.sh).
# - Debian's Chromium, for the test that opens `mlflow ui` in a headless browser
#   (tests/tracking/test_mlflow_ui_browser.py, driven by the `playwright` of the test extra,
#   which downloads no browser of its own). Installed with apt-get when missing (as root, or
#   with sudo); where that is not possible the test is skipped and says why.
#
# Usage: . .venv/bin/activate && pip install -e ".[test]" && bash .ci/install_extras.sh
set -euo pipefail
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install --no-deps "hydra-optuna-sweeper==1.3.0"
bash "$(dirname "$0")/install_horovod.sh"
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    if command -v apt-get >/dev/null 2>&1 && \
        { $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
          { $SUDO apt-get update >/dev/null 2>&1 && \
            $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; }; }; then
        echo "install_extras: installed $(chromium --version 2>/dev/null || echo chromium)"
    else
        echo "install_extras: could not install Debian's chromium (apt-get as root); the" \
             "browser test of mlflow ui will be skipped" >&2
    fi
fi
