#!/usr/bin/env bash
# Launch an experiment preset on several devices with Horovod: one process per device,
#   horovodrun -np N -H HOSTS python -m unet3d.run strategy=horovod experiment=NAME ...
# Every rank gets the same UNET3D_LAUNCH_TIME, so all of them agree on one Hydra output dir.
# Run it from the folder that should hold outputs/, data/ and mlflow.db (shared by all hosts).
set -euo pipefail
# shellcheck source=experiments/_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
    cat >&2 <<USAGE
Usage: $(basename "$0") [-d DEVICE] NUM_PROCESSES [HOSTS] EXPERIMENT [OVERRIDE ...]

  NUM_PROCESSES  number of Horovod processes, one per MLU/GPU (e.g. 8)
  HOSTS          horovodrun host list HOST:SLOTS[,HOST:SLOTS...] (default localhost:NUM_PROCESSES),
                 e.g. node1:4,node2:4
  EXPERIMENT     a preset of conf/experiment/, e.g. seed_8mlu_horovod_fp32
  OVERRIDE       extra Hydra overrides, e.g. data.raw_dir=/data/BraTS2019 training.max_steps=800
  -d DEVICE      mlu | gpu | cpu | auto: overrides the preset's device (seed presets: mlu)

Environment: PYTHON (default python), HOROVODRUN_ARGS (extra horovodrun flags, e.g. --gloo),
UNET3D_LAUNCH_TIME (YYYY-mm-dd_HH-MM-SS; default now), UNET3D_LAUNCH_ID (run folder
suffix; default 6 random hex digits), TF_MLU_THREAD_MODE / TF_MLU_THREAD_COUNT
(default mlu_private / 8, exported unless -d gpu|cpu; stock TensorFlow ignores them).

Example: $(basename "$0") 8 localhost:8 seed_8mlu_horovod_fp32 data.raw_dir=/data/BraTS2019
USAGE
}

device=""
while getopts ":d:h" option; do
    case "$option" in
        d) device="$OPTARG" ;;
        h) usage; exit 0 ;;
        *) bad_option "$option" "$OPTARG" ;;
    esac
done
shift $((OPTIND - 1))

if [[ $# -lt 2 ]]; then
    usage
    exit 2
fi
num_processes="$1"
shift
require_positive_integer NUM_PROCESSES "$num_processes"
# HOSTS is optional: a host list has HOST:SLOTS entries, an experiment name has no ':'.
hosts="localhost:$num_processes"
if [[ "$1" =~ ^[^=,:]+:[0-9]+(,[^=,:]+:[0-9]+)*$ ]]; then
    hosts="$1"
    shift
fi
if [[ $# -lt 1 || "$1" == *=* ]]; then
    fail_usage "EXPERIMENT is missing"
fi
experiment="$1"
shift
check_device "$device"

if ! command -v horovodrun >/dev/null 2>&1; then
    echo "error: horovodrun not found; build Horovod with 'bash .ci/install_horovod.sh'" >&2
    exit 1
fi

# One launch time for every rank (Hydra's run dir is named after it).
export UNET3D_LAUNCH_TIME="${UNET3D_LAUNCH_TIME:-$(date +%Y-%m-%d_%H-%M-%S)}"
# The run folder suffix, the same for every process of this launch.
export UNET3D_LAUNCH_ID="${UNET3D_LAUNCH_ID:-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}"
# Cambricon's TensorFlow reads these when it enumerates MLUs (the seed's run scripts set them).
if [[ "$device" != gpu && "$device" != cpu ]]; then
    export TF_MLU_THREAD_MODE="${TF_MLU_THREAD_MODE:-mlu_private}"
    export TF_MLU_THREAD_COUNT="${TF_MLU_THREAD_COUNT:-8}"
fi

overrides=(strategy=horovod "experiment=$experiment")
if [[ -n "$device" ]]; then
    overrides+=("device=$device")
fi

set -x
# shellcheck disable=SC2086  # HOROVODRUN_ARGS is a list of flags: split it
exec horovodrun -np "$num_processes" -H "$hosts" ${HOROVODRUN_ARGS:-} \
    "${PYTHON:-python}" -m unet3d.run "${overrides[@]}" "$@"
