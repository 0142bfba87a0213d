#!/usr/bin/env bash
# Single-device inference at batch 2 on a trained checkpoint (experiment=infer_1mlu_bs2, the
# seed's Infer_UNet_3D_Medical_Float32_Bsz_2.sh): scores every held-out case of the fold and
# prints the seed's Dice table plus the BraTS regions.
set -euo pipefail
# shellcheck source=experiments/_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
    cat >&2 <<USAGE
Usage: $(basename "$0") [-d DEVICE] CHECKPOINT [OVERRIDE ...]

  CHECKPOINT  a training run's folder, its checkpoints/ folder or a prefix such as .../ckpt-16000
  OVERRIDE    extra Hydra overrides; use the data, model and fold of the training run
  -d DEVICE   mlu (the preset's) | gpu | cpu | auto

Environment: PYTHON (default python).
Example: $(basename "$0") -d gpu outputs/2026-01-01/12-00-00_train_and_evaluate_fold0 \\
             data.raw_dir=/data/BraTS2019
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
check_device "$device"

if [[ $# -lt 1 ]]; then
    usage
    exit 2
fi
checkpoint="$1"
shift
if [[ ! -e "$checkpoint" && ! -e "$checkpoint.index" ]]; then
    echo "error: checkpoint $checkpoint does not exist" >&2
    exit 1
fi

overrides=(experiment=infer_1mlu_bs2 "checkpoint=$checkpoint")
[[ -n "$device" ]] && overrides+=("device=$device")
set -x
exec "${PYTHON:-python}" -m unet3d.run "${overrides[@]}" "$@"
