#!/usr/bin/env bash
# A realistic GPU trial, once with the augmentation in the loader and once on the device: training images/s,
# the share of each step spent waiting for the loader, GPU utilisation and memory, into bench/RESULTS.md.
#
#   bash bench/gpu_check.sh [--results PATH] [key=value ...]
#
# Photos: the demo generator's (300 people, 2,100 photos at 384x512), cut at the fixed face box into crops of
# 256 px (faces.method=center: this checks training, not the face detector). Each trial is
# `python -m search.tune --config conf/competition.yaml` with one trial of 10 epochs (about 270 steps of 64):
# EfficientNet-Lite0 with its offline ImageNet weights at 224 px, the strong preset, 4 loader workers, AMP
# and channels_last, on one GPU; the first study sets train.augment_on=loader (albumentations in the
# workers), the second train.augment_on=device (the workers only gather crops, the batch is augmented on
# the GPU). Extra key=value overrides go to both searches. nvidia-smi samples utilisation and memory every
# second; bench/_gpu_report.py reads each trial's per-epoch images/s and loader wait (result.json) and the GPU
# figures over the trials' time. About three minutes on one current GPU. PYTHON picks the interpreter.
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
"$PY" -m maskclf.demo --out "$run/data" --people 300 --eval-people 10 --quiet

nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1 >"$run/gpu.csv" &
smi=$!
trap 'kill "$smi" 2>/dev/null || true' EXIT

start=$SECONDS
for where in loader device; do
  "$PY" -m search.tune --config conf/competition.yaml "data.root=$run/data" data.corrections= \
    "run.dir=$run/runs" "run.study=gpu-$where" search.address=local faces.method=center faces.size=256 \
    model.backbone=tf_efficientnet_lite0 model.pretrained=true model.pretrained_source=offline \
    "search.space={model.backbone: {choice: [tf_efficientnet_lite0]}}" search.num_samples=1 \
    search.max_concurrent=1 search.scheduler=fifo search.gpus_per_trial=1 search.cpus_per_trial=4 \
    train.device=cuda train.epochs=10 train.batch_size=64 train.image_size=224 train.augment=strong \
    train.num_workers=4 train.amp=true train.channels_last=true "train.augment_on=$where" "$@"
done
seconds=$((SECONDS - start))
kill "$smi" 2>/dev/null || true
wait "$smi" 2>/dev/null || true

"$PY" bench/_gpu_report.py --trials "$run/runs/tune" --gpu-log "$run/gpu.csv" --seconds "$seconds" \
  --command "$command" --results "$results"
rm -rf "$run"
