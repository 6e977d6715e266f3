#!/usr/bin/env bash
# Plain questions (the layout the integrations send) on varied needles and whole-document tasks,
# the read paths side by side: the compressed cache (the library's default), focus, the hybrid
# (compressed document + best leaf in full) and BM25; docs/read-paths.md reports them.
#
#   bash benchmarks/plain_questions.sh PART [PART ...]
#
#   default-needle  the embedded default model, needle task at 2x and 4x, 20 samples
#   qwen-needle     Qwen2.5-Coder-0.5B with an emulated 8k window (HOMER chunks of 4096): needle at
#                   32k and 64k, 20 samples; full attention over the native 32k window as the ceiling
#   qwen-inside     the whole-document tasks inside the emulated window first (8k, plain model),
#                   on the 0.5B and the 1.5B, 5 samples: keep for qwen-whole only what they solve
#   qwen-whole      the whole-document tasks at 32k (TASKS, default count,cwe,twofacts,vartrack) on
#                   MODEL (default the 1.5B), 10 samples, with full attention as the ceiling
#
# Needs `bash scripts/fetch_models.sh` for the Qwen parts. Every run resumes (--resume).
# Cost, measured on a 2-core AMD EPYC shared with other jobs, one thread, float32: the default model
# takes about 430 s per needle sample at 16k and 680 s at 32k for the four read paths together
# (so default-needle is about 6 CPU hours; split it with FIRST/LAST over two processes). The Qwen
# parts are not yet timed here; budget them on two samples first (LAST=2).
# env: RESULTS (default results/plain-questions), FIRST/LAST (samples FIRST..LAST-1), THREADS (1),
#      MAX_SECONDS (budget of each run, default 86400)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RESULTS:-results/plain-questions}
THREADS=${THREADS:-1}
EVAL=(.venv/bin/homer-llm eval --layout plain --seed 0 --depths random --threads "$THREADS" --dtype float32)
PATHS=homer-ownleaf,homer-focus-leaf,homer-hybrid,bm25
qwen() { .venv/bin/python -m homer_llm.extra_models path "$1"; }

run() {  # run NAME SAMPLES FLAGS...: one harness run into $R/NAME-FIRST
  local name=$1 samples=$2; shift 2
  local first=${FIRST:-0}
  "${EVAL[@]}" --resume --out "$R/$name-$first" --first-sample "$first" --samples "${LAST:-$samples}" \
    --max-seconds "${MAX_SECONDS:-86400}" --call-seconds 2400 "$@"
}

for part in "$@"; do
  case $part in
    default-needle) run default-needle 20 --tasks needle --methods "$PATHS" --lengths 2x,4x --focus-leaves 2 ;;
    qwen-needle)
      run qwen05-needle-32k 20 --model "$(qwen 0.5b)" --window 8192 --tasks needle --lengths 32k \
        --methods "$PATHS,truncate,full" --focus-leaves 2
      run qwen05-needle-64k 20 --model "$(qwen 0.5b)" --window 8192 --tasks needle --lengths 64k \
        --methods "$PATHS,truncate" --focus-leaves 2 ;;
    qwen-inside)
      for size in 0.5b 1.5b; do
        run "qwen${size/./}-inside-8k" 5 --model "$(qwen $size)" --window 8192 --lengths 8k --methods full \
          --tasks "${TASKS:-count,cwe,twofacts,vartrack}"
      done ;;
    qwen-whole)
      run "whole-32k" 10 --model "${MODEL:-$(qwen 1.5b)}" --window 8192 --lengths 32k \
        --tasks "${TASKS:-count,cwe,twofacts,vartrack}" --methods "$PATHS,truncate,full" --focus-leaves 2 ;;
    *) echo "plain_questions.sh: unknown part '$part' (default-needle, qwen-needle, qwen-inside, qwen-whole)" >&2; exit 2 ;;
  esac
done
