#!/usr/bin/env bash
# The plug-ins that pip cannot resolve from setup.cfg's extras, into the active environment:
#
# - hydra-optuna-sweeper 1.3.0 (hparams_search=unet3d_optuna) declares optuna<3, but optuna 2.x
#   cannot open its SQLite storage with SQLAlchemy 2 (which MLflow 3 needs): it is installed
#   without its dependencies, next to the optuna>=4,<5 of the `test` / `hpo` extras, with which
#   the plug-in works unchanged (tests/e2e/test_optuna_e2e.py).
# - Horovod 0.28.1, built against the installed TensorFlow (.ci/install_horovod.sh).
#
# Usage: . .venv/bin/activate && pip install -e ".[test]" && bash .ci/install_extras.sh
set -euo pipefail
PYTHON="${PYTHON:-python}"
"$PYTHON" -m pip install --no-deps "hydra-optuna-sweeper==1.3.0"
bash "$(dirname "$0")/install_horovod.sh"
