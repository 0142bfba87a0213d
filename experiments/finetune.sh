#!/usr/bin/env bash
# Resume-from-checkpoint fine-tuning (experiment=finetune_resume): continue the run in RUN_DIR
# from its newest checkpoint for EXTRA_STEPS more steps, in that same folder (resume_dir=RUN_DIR
# becomes hydra.run.dir). training.max_steps is the step to stop at, so this script reads the
# checkpoint's step and passes training.max_steps=(step + EXTRA_STEPS), times NUM_PROCESSES under
# Horovod (which divides max_steps by the processes). With -n the job runs through
# horovod_train.sh.
set -euo pipefail
# shellcheck source=experiments/_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
    cat >&2 <<USAGE
Usage: $(basename "$0") [-n NUM_PROCESSES] [-H HOSTS] [-d DEVICE] RUN_DIR EXTRA_STEPS [OVERRIDE ...]

  RUN_DIR           output folder of the run to continue (holds checkpoints/)
  EXTRA_STEPS       training steps to add (per process under Horovod), e.g. 1000
  OVERRIDE          extra Hydra overrides: keep the data, model, batch size and fold of that run
  -n NUM_PROCESSES  continue under Horovod with this many processes (see horovod_train.sh)
  -H HOSTS          horovodrun host list (with -n; default localhost:NUM_PROCESSES)
  -d DEVICE         mlu | gpu | cpu | auto

Environment: PYTHON (default python).
Example: $(basename "$0") outputs/2026-01-01/12-00-00_train_and_evaluate_fold0 1000 \\
             data.raw_dir=/data/BraTS2019
         $(basename "$0") -n 8 -d mlu outputs/2026-01-01/12-00-00_train_fold0 1000 \\
             data.batch_size=1 data.raw_dir=/data/BraTS2019
USAGE
}

num_processes=""
hosts=""
device=""
while getopts ":n:H:d:h" option; do
    case "$option" in
        n) num_processes="$OPTARG" ;;
        H) hosts="$OPTARG" ;;
        d) device="$OPTARG" ;;
        h) usage; exit 0 ;;
        *) bad_option "$option" "$OPTARG" ;;
    esac
done
shift $((OPTIND - 1))
check_device "$device"

if [[ $# -lt 2 ]]; then
    usage
    exit 2
fi
run_dir="$1"
extra_steps="$2"
shift 2
require_positive_integer EXTRA_STEPS "$extra_steps"
if [[ -n "$num_processes" ]]; then
    require_positive_integer "-n NUM_PROCESSES" "$num_processes"
fi
# TensorFlow's index file names the newest checkpoint: model_checkpoint_path: "ckpt-2000".
index="$run_dir/checkpoints/checkpoint"
if [[ ! -f "$index" ]]; then
    echo "error: $index does not exist: RUN_DIR must be the folder of a training run" >&2
    exit 1
fi
step=$(sed -n 's/^model_checkpoint_path: *"[^"]*ckpt-\([0-9][0-9]*\)"$/\1/p' "$index")
if [[ -z "$step" ]]; then
    echo "error: cannot read the newest checkpoint's step from $index" >&2
    exit 1
fi
max_steps=$(( (step + extra_steps) * ${num_processes:-1} ))
echo "continuing $run_dir from step $step to step $((step + extra_steps))" >&2

if [[ -n "$num_processes" ]]; then
    launcher_options=()
    [[ -n "$device" ]] && launcher_options+=(-d "$device")
    exec "$(dirname "$0")/horovod_train.sh" "${launcher_options[@]}" "$num_processes" \
        ${hosts:+"$hosts"} finetune_resume "resume_dir=$run_dir" \
        "training.max_steps=$max_steps" "$@"
fi
overrides=(experiment=finetune_resume "resume_dir=$run_dir" "training.max_steps=$max_steps")
[[ -n "$device" ]] && overrides+=("device=$device")
set -x
exec "${PYTHON:-python}" -m unet3d.run "${overrides[@]}" "$@"
