#!/usr/bin/env bash
# K-fold cross-validation: one Hydra multirun job per fold, summarised by the sweep callback
# (cv_summary.md / cv_summary.csv in the sweep dir, one MLflow parent run with a child per fold):
#   python -m unet3d.run --multirun experiment=cross_validation_5fold ...
# The sweep exits non-zero when a fold failed.
set -euo pipefail
# shellcheck source=experiments/_common.sh
. "$(dirname "$0")/_common.sh"

usage() {
    cat >&2 <<USAGE
Usage: $(basename "$0") [-k NUM_FOLDS] [-j PARALLEL_JOBS] [-e EXPERIMENT] [OVERRIDE ...]

  -k NUM_FOLDS      folds (default: the preset's, 5); sets num_folds and fold=range(K)
  -j PARALLEL_JOBS  run folds side by side with the joblib launcher (needs the launchers extra)
  -e EXPERIMENT     preset to sweep (default cross_validation_5fold)
  OVERRIDE          extra Hydra overrides, e.g. data.raw_dir=/data/BraTS2019 precision=amp

Environment: PYTHON (default python).
Example: $(basename "$0") data.raw_dir=/data/BraTS2019
         $(basename "$0") -k 3 data=synthetic debug=fast
USAGE
}

experiment=cross_validation_5fold
num_folds=""
parallel_jobs=""
while getopts ":k:j:e:h" option; do
    case "$option" in
        k) num_folds="$OPTARG" ;;
        j) parallel_jobs="$OPTARG" ;;
        e) experiment="$OPTARG" ;;
        h) usage; exit 0 ;;
        *) bad_option "$option" "$OPTARG" ;;
    esac
done
shift $((OPTIND - 1))

overrides=("experiment=$experiment")
if [[ -n "$num_folds" ]]; then
    if ! [[ "$num_folds" =~ ^[0-9]+$ ]] || (( num_folds < 2 )); then
        fail_usage "-k NUM_FOLDS must be an integer >= 2, got '$num_folds'"
    fi
    # A fold sweep on the command line replaces the preset's hydra.sweeper.params.fold.
    overrides+=("num_folds=$num_folds" "fold=range($num_folds)")
fi
if [[ -n "$parallel_jobs" ]]; then
    require_positive_integer "-j PARALLEL_JOBS" "$parallel_jobs"
    overrides+=("hydra/launcher=joblib" "hydra.launcher.n_jobs=$parallel_jobs")
fi

set -x
exec "${PYTHON:-python}" -m unet3d.run --multirun "${overrides[@]}" "$@"
