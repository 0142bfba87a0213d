# syntax=docker/dockerfile:1
# unet3d on NVIDIA GPUs with Horovod (NCCL all-reduce when the base image has the CUDA compiler
# and NCCL's headers, Gloo otherwise). Build and run from the repository root:
#   docker build -t unet3d .
#   docker run --gpus all --shm-size=16g -v "$PWD/work:/workspace" \
#       -v /data/MICCAI_BraTS_2019_Data_Training:/brats:ro \
#       unet3d experiment=brats2019_reference data.raw_dir=/brats device=gpu
#   docker run --gpus all --shm-size=16g -v "$PWD/work:/workspace" -v /data/brats:/brats:ro \
#       --entrypoint horovod_train.sh unet3d -d gpu 8 seed_8mlu_horovod_fp32 data.raw_dir=/brats
# /workspace holds the MLflow store (mlflow.db, mlartifacts/), data/ (preprocessed cache) and
# outputs/; a host folder mounted there must be writable by UID ${USER_UID} (default 1000).
#
# MLU servers, as the seed does: load Cambricon's TensorFlow 2 image (`docker load -i ...`)
# and build FROM it; it ships its own TensorFlow (and usually Horovod), which is kept:
#   docker build --build-arg BASE_IMAGE=<cambricon_tensorflow2_image>:<tag> -t unet3d-mlu .
#   docker run --privileged --device /dev/cambricon_ctl --device /dev/cambricon_dev0 ... \
#       -v /usr/bin/cnmon:/usr/bin/cnmon unet3d-mlu experiment=seed_1mlu_fp32_1000steps ...

# The base image's TensorFlow must satisfy setup.cfg's pin (>=2.16,<2.19; Horovod 0.28.1 does not
# build against 2.19+): tensorflow/tensorflow:2.18.0-gpu has TensorFlow 2.18.0 with CUDA 12.
ARG BASE_IMAGE=tensorflow/tensorflow:2.18.0-gpu
FROM ${BASE_IMAGE}

# How Horovod all-reduces GPU tensors. auto: NCCL when the image has nvcc and nccl.h (a CUDA
# "devel" image with libnccl-dev), else Gloo through host memory (the stock TensorFlow image
# ships CUDA's runtime only, so it gets Gloo); NCCL: require it; gloo: never NCCL.
ARG HOROVOD_GPU_OPERATIONS=auto
ARG USER_UID=1000

# PIP_BREAK_SYSTEM_PACKAGES: base images whose system Python is "externally managed" (PEP 668).
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TF_CPP_MIN_LOG_LEVEL=1

# g++/make build Horovod; git for MLflow's source tags; ssh for multi-host horovodrun.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make git openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && (command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python)

WORKDIR /opt/unet3d

# Horovod first (slow, rarely changes), compiled against the base image's TensorFlow by the same
# script and flags as README and CI (.ci/install_horovod.sh: TensorFlow + Gloo, no MPI/PyTorch/
# MXNet, pip install --no-build-isolation horovod==0.28.1). It does nothing when Horovod is
# already importable (e.g. in Cambricon's image).
COPY .ci/install_horovod.sh .ci/install_horovod.sh
RUN <<'BUILD_HOROVOD'
set -eu
operations="${HOROVOD_GPU_OPERATIONS}"
nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
nccl_header=$(ls /usr/include/nccl.h /usr/local/cuda/include/nccl.h 2>/dev/null | head -n 1 || true)
if [ "$operations" = auto ]; then
    operations=gloo
    if [ -n "$nvcc" ] && [ -n "$nccl_header" ]; then operations=NCCL; fi
fi
if [ "$operations" = NCCL ]; then
    if [ -z "$nvcc" ] || [ -z "$nccl_header" ]; then
        echo "HOROVOD_GPU_OPERATIONS=NCCL needs nvcc and nccl.h (CUDA toolkit, libnccl-dev)" >&2
        exit 1
    fi
    nccl_library=$(ldconfig -p | sed -n 's/.*libnccl\.so.* => \(.*\)/\1/p' | head -n 1)
    export HOROVOD_GPU_OPERATIONS=NCCL
    export HOROVOD_CUDA_HOME="$(dirname "$(dirname "$nvcc")")"
    export HOROVOD_NCCL_INCLUDE="$(dirname "$nccl_header")"
    export HOROVOD_NCCL_LIB="$(dirname "${nccl_library:-/usr/lib/x86_64-linux-gnu/libnccl.so}")"
else
    unset HOROVOD_GPU_OPERATIONS
fi
echo "building Horovod with GPU operations: ${HOROVOD_GPU_OPERATIONS:-none (Gloo)}"
bash .ci/install_horovod.sh
BUILD_HOROVOD

# Editable install: Hydra reads conf/ from beside the unet3d package (unet3d/run.py uses
# <package>/../conf), and conf/ is not part of the Python package, so the project stays in this
# folder with conf/ and experiments/ next to the code. No cpu/gpu/test extra: those would
# pip-install a second TensorFlow over the base image's (or over Cambricon's build).
COPY pyproject.toml setup.cfg README.md ./
COPY unet3d/ unet3d/
COPY conf/ conf/
COPY experiments/ experiments/
RUN python -m pip install -e ".[launchers]" \
    && python -c "import tensorflow as tf, horovod.tensorflow; print('TensorFlow', tf.__version__)"

RUN useradd --create-home --non-unique --uid "${USER_UID}" --shell /bin/bash unet3d \
    && mkdir -p /workspace/outputs /workspace/data \
    && chown -R unet3d:unet3d /workspace
USER unet3d
WORKDIR /workspace
# paths.root_dir: the MLflow store (sqlite:////workspace/mlflow.db, mlartifacts/) and data/.
ENV UNET3D_ROOT=/workspace \
    PATH=/opt/unet3d/experiments:${PATH}
VOLUME ["/workspace", "/workspace/outputs"]

ENTRYPOINT ["python", "-m", "unet3d.run"]
CMD ["--help"]
