#!/usr/bin/env bash
# The smoke search on a CUDA GPU: training images/s per trial and GPU utilisation, into bench/RESULTS.md.
#
#   bash bench/gpu_check.sh [--results PATH] [key=value ...]
#
# Runs `python -m search.tune --config conf/smoke.yaml` with search.gpus_per_trial=0.5 (both smoke
# trials share one GPU) and train.device=cuda, in a fresh local Ray and a temporary run dir; extra
# key=value overrides go to the search (e.g. search.gpus_per_trial=1 model.backbone=resnet18).
# On CUDA, engine.fit trains with autocast (bf16 where supported, else fp16 with a grad scaler)
# and channels_last. nvidia-smi samples utilisation and memory every second in the background;
# bench/_gpu_report.py then reads each trial's per-epoch images/s (result.json) and the GPU figures
# over the trials' time. PYTHON picks the interpreter (default: python).
# Without a usable GPU it prints one line on stderr and exits with code 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
results=bench/RESULTS.md
command="bash bench/gpu_check.sh $*"
if [[ "${1:-}" == "--results" ]]; then
  results=$2
  shift 2
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench/gpu_check.sh: no NVIDIA GPU on this machine (nvidia-smi missing or failing); run it where there is one" >&2
  exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "bench/gpu_check.sh: nvidia-smi sees a GPU but torch in $PY does not (torch.cuda.is_available() is False)" >&2
  exit 2
fi

run=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1 >"$run/gpu.csv" &
smi=$!
trap 'kill "$smi" 2>/dev/null || true' EXIT

start=$SECONDS
"$PY" -m search.tune --config conf/smoke.yaml "run.dir=$run/runs" search.gpus_per_trial=0.5 train.device=cuda \
  search.address=local "$@"
seconds=$((SECONDS - start))
kill "$smi" 2>/dev/null || true
wait "$smi" 2>/dev/null || true

"$PY" bench/_gpu_report.py --trials "$run/runs/tune" --gpu-log "$run/gpu.csv" --seconds "$seconds" \
  --command "$command" --results "$results"
rm -rf "$run"
