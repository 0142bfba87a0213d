#!/usr/bin/env bash
# Build Horovod 0.28.1 (TensorFlow + Gloo, no MPI) into the active Python environment.
#
# Horovod 0.28.1 is the last release and ships only as an sdist compiled at install time
# against the TensorFlow already installed (it builds against TF 2.13 .. 2.18.1). Needs g++
# and cmake (cmake is taken from pip when it is not on PATH). Takes about 2-3 minutes.
#
# Usage: . .venv/bin/activate && bash .ci/install_horovod.sh
set -euo pipefail

HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
PYTHON="${PYTHON:-python}"

if "$PYTHON" -c "import horovod.tensorflow" >/dev/null 2>&1; then
    echo "horovod.tensorflow already importable; nothing to do"
    exit 0
fi

if ! "$PYTHON" -c "import tensorflow" >/dev/null 2>&1; then
    echo "ERROR: TensorFlow must be installed first (Horovod builds against it)" >&2
    exit 1
fi

if ! command -v g++ >/dev/null 2>&1; then
    echo "ERROR: g++ is required to build Horovod (apt-get install g++)" >&2
    exit 1
fi

if ! command -v cmake >/dev/null 2>&1; then
    echo "cmake not on PATH; installing it from pip"
    "$PYTHON" -m pip install cmake
fi

# Horovod's setup.py imports setuptools/wheel/packaging from the environment
# (--no-build-isolation), so make sure they are present.
"$PYTHON" -m pip install --quiet setuptools wheel packaging

export HOROVOD_WITH_TENSORFLOW=1
export HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_MPI=1
export HOROVOD_WITHOUT_PYTORCH=1
export HOROVOD_WITHOUT_MXNET=1
# Keep the build within the machine's cores.
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc 2>/dev/null || echo 2)}"

"$PYTHON" -m pip install --no-build-isolation --no-cache-dir "horovod==${HOROVOD_VERSION}"

"$PYTHON" -c "import horovod, horovod.tensorflow; print('horovod', horovod.__version__, 'with TensorFlow')"
horovodrun --check-build
