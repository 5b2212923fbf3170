#!/usr/bin/env bash
# One prepared GPU session (one 10-minute device command): the engine check and the adaptation benchmark.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_lease.sh [ADAPTATION_SECONDS]     # default 470
#   OUT=/tmp/gpu SEEDS=0 bash benchmarks/gpu_lease.sh                  # one training seed
#
# Side by side, because neither fills the GPU:
#   1. benchmarks/gpu_check.py: bf16 + ZeRO-2 training steps of every stage's engines, tiny and
#      paper size, and the full-size semi-supervised step's peak memory with/without activation
#      checkpointing (its own 300 s limit).
#   2. benchmarks/adaptation.py --budget gpu --parallel: the demo's configuration at 4x its steps,
#      training seeds $SEEDS (default 0 1 2) at once, every training job on the GPU
#      (ADAPTATION_SECONDS limit). Measured on an H200 (docs/results.md "On one H200"): 3 seeds
#      need about 11 min, so the default limit cuts them (the archive keeps every stage's curves);
#      one 10-minute command holds them only without the engine check, or with fewer seeds.
# Everything comes back as at most 8 files under $OUT: the two logs, nvidia-smi's line, the
# benchmark's adaptation.{json,md}, and one archive of every stage's metrics.jsonl / DONE /
# metrics.json / results.json and the stage-1 report PNGs (the curves, also for a run cut short).
# Needs the project's dependencies importable by $PYTHON (default python3); nothing is downloaded.
set -u
OUT=${OUT:-gpu_lease_out}
PYTHON=${PYTHON:-python3}
LIMIT=${1:-470}
SEEDS=${SEEDS:-0 1 2}
WORK=${WORK:-/tmp/gpu_lease_adaptation}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia-smi.csv" 2>&1
timeout 300 "$PYTHON" benchmarks/gpu_check.py >"$OUT/gpu_check.log" 2>&1 &
check=$!
timeout "$LIMIT" "$PYTHON" benchmarks/adaptation.py --budget gpu --parallel --seeds $SEEDS --out "$WORK" >"$OUT/adaptation.log" 2>&1
echo "adaptation exit status $?" >>"$OUT/adaptation.log"
wait "$check"
echo "gpu_check exit status $?" >>"$OUT/gpu_check.log"

cp "$WORK"/adaptation.json "$WORK"/adaptation.md "$OUT"/ 2>/dev/null
(cd "$WORK" && find . -path ./data -prune -o \( -name metrics.jsonl -o -name DONE -o -name metrics.json \
    -o -name 'results.*' -o -name report.png \) -print0 | tar czf "$OUT/adaptation_runs.tgz" --null -T -)
ls -la "$OUT"
