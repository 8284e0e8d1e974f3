#!/usr/bin/env bash
# Meta-transfer learning on one GPU (mini-ImageNet, ResNet-12, the paper's protocol), under a budget.
#
#   MTL_DATA=/path/to/data benchmarks/gpu_mtl.sh [OUT=runs/mtl-gpu] [BUDGET_S=3600]
#
# 1. benchmarks/bench_mtl.py: pre-training throughput (fp32 / bf16 / channels-last), MTL meta-step
#    and per-episode times of every baseline              -> OUT/bench_mtl.json
# 2. 5-way 1-shot: pre-train (half the budget at most), MTL+HT and MTL (the HT ablation), then the
#    baselines, all on the same 600 test episodes          -> OUT/results-gpu-miniimagenet-5w1s.json
# 3. 5-way 5-shot, reusing the pre-trained network         -> OUT/results-gpu-miniimagenet-5w5s.json
# Every stage is an engine run folder under OUT (checkpoints, metrics.jsonl); rerunning the script
# with the same OUT resumes an unfinished stage and skips finished ones. Results JSON files are
# rewritten after every stage, so a run cut short keeps its partial progress.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/mtl-gpu}
BUDGET=${2:-3600}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MTL_PROGRESS=${MTL_PROGRESS:-0}
"$PY" -m mtl data prepare --dataset mini-imagenet 2>&1 | tail -3 || true   # build the cache once
"$PY" benchmarks/bench_mtl.py --device cuda --json "$OUT/bench_mtl.json"
# 1-shot: half of the budget pre-trains, the other half is shared by MTL+HT and MTL.
"$PY" -m mtl.course.pipeline --profile gpu-miniimagenet-5w1s --out "$OUT" --budget "$BUDGET" --no-progress
# 5-shot: the pre-trained network is reused (its stage is skipped); meta-training gets the same share.
"$PY" -m mtl.course.pipeline --profile gpu-miniimagenet-5w5s --out "$OUT" --budget "$BUDGET" --no-progress
