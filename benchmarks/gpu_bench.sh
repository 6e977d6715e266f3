#!/usr/bin/env bash
# One-call GPU benchmark: plain transformers prefill vs HOMER on a random-initialised full-size model.
#
#   bash benchmarks/gpu_bench.sh [CONFIG] [MAX_LENGTH] [PROFILE_LENGTH]
#     CONFIG          llama2-7b (default) | llama3-8b | smollm2-135m
#     MAX_LENGTH      largest input length of the doubling series from $MIN_LENGTH (default 4k; default max 1M)
#     PROFILE_LENGTH  one extra profiled HOMER run (host syncs, kernel launches, top ops; default 64k, "none" to skip)
#
# Needs: a CUDA GPU and a python3 with torch + transformers 5 + matplotlib (the device image has them;
# nothing is installed or downloaded). Writes four files under $OUT (default results/gpu-<config>):
#   env.txt, bench_<config>.json (written row by row, so a cut-off run keeps its rows),
#   bench_<config>.png, bench_<config>.log (table, growth per doubling, profile).
# METHODS: the bench rows (default plain,homer: homer is HomerConfig's default, own-leaf merges);
#   METHODS=plain,homer,homer-causal,homer-focus adds causal merges and focus (benchmarks/gpu_sweep.sh
#   runs all four with the targets in one call).
# BENCH_ARGS: extra bench flags, e.g. the homer row with causal merges:
#   BENCH_ARGS="--merge-attention causal" OUT=results/gpu-llama3-8b-causal bash benchmarks/gpu_bench.sh llama3-8b 1M none
# Sized for one 10-minute device call per config on an H100 (estimate in benchmarks/PERF_NOTES.md);
# the python step is capped by BENCH_TIMEOUT seconds (default 540) and replots whatever it measured.
set -uo pipefail

CONFIG=${1:-llama2-7b}
MAX_LENGTH=${2:-1M}
PROFILE_LENGTH=${3:-64k}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu with CONFIG=tiny smoke-tests this script without a GPU
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu-$CONFIG}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('transformers', transformers.__version__)"
  git rev-parse HEAD 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "$DEVICE" != "cpu" ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
fi

LOG="$OUT/bench_$CONFIG.log"
JSON="$OUT/bench_$CONFIG.json"
PNG="$OUT/bench_$CONFIG.png"
PROFILE_ARGS=()
[ "$PROFILE_LENGTH" != "none" ] && PROFILE_ARGS=(--profile "$PROFILE_LENGTH")

timeout "${BENCH_TIMEOUT:-540}" "$PY" -m homer_llm.bench -v --device "$DEVICE" --config "$CONFIG" \
  --min-length "${MIN_LENGTH:-4k}" --max-length "$MAX_LENGTH" --repeats 3 --warmup 1 --budget-s 20 --decode-tokens 16 \
  --methods "${METHODS:-plain,homer}" --json "$JSON" --plot "$PNG" "${PROFILE_ARGS[@]}" ${BENCH_ARGS:-} 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ] && [ -f "$JSON" ]; then
  echo "bench exited with $status; table and plot of the rows measured so far:" | tee -a "$LOG"
  "$PY" -m homer_llm.bench --replot "$JSON" --plot "$PNG" 2>&1 | tee -a "$LOG"
fi
exit "$status"
