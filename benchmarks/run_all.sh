#!/usr/bin/env bash
# Reproduce every speed figure of README: writes benchmarks/results/*.json.
#
#   bash benchmarks/run_all.sh           # the README set (about 30-40 min on an idle 2-core CPU)
#   QUICK=1 bash benchmarks/run_all.sh   # a smoke run of every script (a few minutes)
#
# Run on an otherwise idle machine: numbers measured while other processes use the CPUs are
# pessimistic (each result records the load average). Extra environment:
#   RESULTS=dir   where the JSON files go (default benchmarks/results)
#   CHECKPOINT=p  a trained checkpoint of the default small model: also measure the brain
#                 crop's and amp's segmentation agreement
#                 (python -m benchmarks.studies.predict_crop agree)
#   WORKDIR=dir   runner working folder: MLflow store, run dirs, synthetic data cache
#                 (default $TMPDIR/unet3d-benchmarks)
#   TORCH_PYTHON=p  python of a venv with torch and monai: also time predict against MONAI
#                 (benchmarks/predict_vs_monai.py; how to make the venv: benchmarks/_monai_predict.py)
#
# Every result file records the host: lscpu's model name, family and model, and whether the CPU
# has avx512_bf16 / amx_bf16 (benchmarks/_common.py: environment.cpu, environment.host);
# host.json holds them alone.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
RESULTS="${RESULTS:-benchmarks/results}"
WORKDIR="${WORKDIR:-${TMPDIR:-/tmp}/unet3d-benchmarks}"
mkdir -p "$RESULTS"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
step() { echo; echo "=== $* ($(date +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))"; }
host() {
    python -c "from benchmarks import _common; \
print('host:', _common.host_label()); \
_common.write_result('$RESULTS/host.json', {'benchmark': 'host', 'cpu': _common.host_cpu()})"
}
host

if [[ "${QUICK:-0}" == "1" ]]; then
    step cpu_peak
    python -m benchmarks.cpu_peak --size 2048 --repeats 3 --out "$RESULTS/cpu_peak.json"
    step train_step
    python -m benchmarks.train_step --models small --precisions fp32 --steps 2 \
        --peak-json "$RESULTS/cpu_peak.json" --out "$RESULTS/train_step.json"
    step runner_overhead
    python -m benchmarks.runner_overhead --steps 4 --rounds 2 --log-every 2 \
        --checkpoint-every 4 --workdir "$WORKDIR" --out "$RESULTS/runner_overhead.json"
    step pipeline
    python -m benchmarks.pipeline --settings default --model-steps 3 1 --skip-real \
        --workdir "$WORKDIR" --out "$RESULTS/pipeline.json"
    step inference
    python -m benchmarks.inference --model small --window 64 --volume 128 128 96 \
        --workdir "$WORKDIR" --out "$RESULTS/inference.json"
    step predict_crop
    python -m benchmarks.studies.predict_crop time --model small --window 64 --rounds 1 \
        --volume 96 96 64 --generate 96 96 80 --shift 4 -4 0 --out "$RESULTS/predict_crop.json"
    step startup
    python -m benchmarks.startup --repeats 1 --train-repeats 1 --workdir "$WORKDIR" \
        --out "$RESULTS/startup.json"
    step onednn_verbose
    python -m benchmarks.onednn_verbose --side 32 --out "$RESULTS/onednn_verbose.json"
    if [[ -n "${TORCH_PYTHON:-}" ]]; then
        step predict_vs_monai
        python -m benchmarks.predict_vs_monai --torch-python "$TORCH_PYTHON" --rounds 1 \
            --model small --volume 96 96 64 --generate 96 96 80 --shift 0 0 0 --window 64 \
            --workdir "$WORKDIR/predict_vs_monai" --out "$RESULTS/predict_vs_monai.json"
    fi
    exit 0
fi

step "cpu_peak: fp32 and bf16 4096^3 matmul"
python -m benchmarks.cpu_peak --out "$RESULTS/cpu_peak.json"
step "train_step: bare step at 64^3 and 128^3, both models, fp32/bf16, XLA off"
python -m benchmarks.train_step --shapes 64 128 --steps 3 \
    --peak-json "$RESULTS/cpu_peak.json" --out "$RESULTS/train_step.json"
step "train_step: XLA on at 64^3 (about 7x slower on CPU)"
python -m benchmarks.train_step --shapes 64 --xla on --warmup 1 --steps 2 \
    --peak-json "$RESULTS/cpu_peak.json" --out "$RESULTS/train_step_xla.json"
step "train_step: thread pools and the per-step loss sync (default job's small model)"
python -m benchmarks.train_step --models small --precisions fp32 --batch 2 --steps 10 \
    --threads 0:0 2:1 1:1 --sync-every 1 10 \
    --peak-json "$RESULTS/cpu_peak.json" --out "$RESULTS/train_step_threads.json"
step "runner_overhead: the default job's training loop vs its bare step, 7 interleaved rounds"
python -m benchmarks.runner_overhead --workdir "$WORKDIR" --out "$RESULTS/runner_overhead.json"
step "pipeline: pipeline-only vs training throughput, default job and 128^3 reference shape"
python -m benchmarks.pipeline --workdir "$WORKDIR" --out "$RESULTS/pipeline.json"
step "inference: one 240x240x155 case, reference widths, 128^3 windows, overlap 0.5, op shares"
python -m benchmarks.inference --precisions fp32 bf16 --op-profile --workdir "$WORKDIR" \
    --out "$RESULTS/inference.json"
step "train_step: where a 128^3 reference step's time goes (op time per op type / layer kind)"
python -m benchmarks.train_step --models reference --shapes 128 --steps 2 --op-profile \
    --peak-json "$RESULTS/cpu_peak.json" --out "$RESULTS/train_step_profile.json"
step "onednn_verbose: conv kernels per dtype and reorders, 128^3 train step and window"
python -m benchmarks.onednn_verbose --side 128 --out "$RESULTS/onednn_verbose.json"
step "predict_crop: today's path vs brain crop fp32 vs crop amp, interleaved, 3 rounds"
python -m benchmarks.studies.predict_crop time --rounds 3 --out "$RESULTS/predict_crop.json"
if [[ -n "${CHECKPOINT:-}" ]]; then  # a trained checkpoint (default small model) for agreement
    step "predict_crop: segmentation agreement of crop / amp with today's fp32 ($CHECKPOINT)"
    python -m benchmarks.studies.predict_crop agree --checkpoint "$CHECKPOINT" \
        --out "$RESULTS/predict_crop_agreement.json"
fi
if [[ -n "${TORCH_PYTHON:-}" ]]; then
    step "predict_vs_monai: mode=predict fp32 / auto vs MONAI sliding window, 3 interleaved rounds"
    python -m benchmarks.predict_vs_monai --torch-python "$TORCH_PYTHON" --rounds 3 \
        --workdir "$WORKDIR/predict_vs_monai" --out "$RESULTS/predict_vs_monai.json"
else
    step "predict_vs_monai skipped: set TORCH_PYTHON (see benchmarks/_monai_predict.py)"
fi
step "startup: --help, a config error, time to the first training step"
python -m benchmarks.startup --workdir "$WORKDIR" --out "$RESULTS/startup.json"
step done
ls -l "$RESULTS"
