#!/usr/bin/env bash
# Reproduce the quality tables of docs/results.md on a CPU with the embedded default model
# (SmolLM2-135M-Instruct, 8k window; HOMER chunk 4096, final cache 4096, 11 of 30 warm-up layers).
#
#   bash benchmarks/eval_cpu.sh TABLE [TABLE ...]
#
#   passkey       passkey on 20 drawn depths (seed 0) at 8k-64k, float32: HOMER (own-leaf merges, the
#                 default; causal merges, as published), HOMER + focus (leaf and tree locators),
#                 HOMER + YaRN, BM25 and truncation; the plain model at 8k; dynamic NTK, YaRN and
#                 linear RoPE at 16k (NTK and YaRN also at 32k)
#   passkey-bf16  the baselines float32 puts out of a CPU's reach, in bfloat16 beside HOMER: every
#                 method at 64k; the plain model, YaRN and linear RoPE at 32k; the plain model at 16k
#   ablations     the paper's two ablations on the default merges (no bias correction; random
#                 pruning), bfloat16, 8k-64k
#   boundaries    focus (both locators) with the needle at the leaf boundaries of a 32k prompt
#   multikey      multi-key retrieval at 32k, 10 drawn depths: HOMER, focus (both locators), BM25
#   perplexity    perplexity at 16k and 64k, 5 samples: own-leaf and causal merges against the last
#                 window, with the last 3840 tokens run whole after the cache and as in the paper
#   report        join each table's runs and render it (results.md, results.json, accuracy.png) into
#                 $RESULTS/<name>, the name of its committed folder under benchmarks/results/
#
# Every run resumes (--resume), so a table cut short continues when run again. Cost, one torch thread
# (docs/results.md): HOMER 49-241 s per sample at 8k-64k in float32; a plain or RoPE-scaled prefill
# about 13 minutes at 32k and 50-60 at 64k in float32, about 8 at 64k in bfloat16 on a CPU with AMX.
# Split a table over processes with FIRST and LAST (each range gets its own run folder).
# env: RESULTS (default results/eval-cpu), FIRST/LAST (samples FIRST..LAST-1; default all),
#      MAX_SECONDS (budget of each run, default 86400), THREADS (torch threads, default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RESULTS:-results/eval-cpu}
THREADS=${THREADS:-1}
# --layout instructed: these tables were measured with the task stated before the document
EVAL=(.venv/bin/homer-llm eval --layout instructed --seed 0 --threads "$THREADS")
BOUNDARY_DEPTHS=12.5,25,37.5,50,62.5,75,87.5
ALL_PASSKEY=homer-focus-leaf,homer-focus,homer-ownleaf,homer,homer-yarn,full,truncate,yarn,ntk,linear,bm25

run() {  # run TABLE NAME SAMPLES FLAGS...: one harness run into $R/runs/TABLE/NAME-FIRST
  local table=$1 name=$2 samples=$3; shift 3
  local first=${FIRST:-0}
  "${EVAL[@]}" --resume --out "$R/runs/$table/$name-$first" --first-sample "$first" --samples "${LAST:-$samples}" \
    --max-seconds "${MAX_SECONDS:-86400}" --call-seconds 2400 "$@"
}

join() {  # join TABLE FOLDER [GREP_PATTERN]: the records of TABLE's runs (filtered) into $R/FOLDER
  local table=$1 folder=$2 pattern=${3:-.}
  mkdir -p "$R/$folder"
  cat "$R"/runs/"$table"/*/records.jsonl 2>/dev/null | grep -e "$pattern" > "$R/$folder/records.jsonl" || true
}

render() {  # render FOLDER FLAGS...: the table, JSON and plot of $R/FOLDER's records
  local folder=$1; shift
  [[ -s "$R/$folder/records.jsonl" ]] || { echo "eval_cpu.sh: no records for $folder yet" >&2; return 0; }
  "${EVAL[@]}" --report-only --out "$R/$folder" "$@"
}

passkey() {
  local D=(--tasks passkey --depths random)
  run passkey homer 20 "${D[@]}" --methods homer-ownleaf,homer --lengths 8k,16k,32k,64k
  run passkey focus 20 "${D[@]}" --methods homer-focus-leaf,homer-focus --lengths 8k,16k,32k,64k
  run passkey homer-yarn 20 "${D[@]}" --methods homer-yarn --yarn-calibration-samples 2 --lengths 16k,32k,64k
  run passkey retrieval 20 "${D[@]}" --methods bm25,truncate --lengths 16k,32k,64k
  run passkey plain 20 "${D[@]}" --methods full --lengths 8k
  run passkey rope 20 "${D[@]}" --methods ntk,yarn,linear --lengths 16k
  run passkey rope32 20 "${D[@]}" --methods ntk,yarn --lengths 32k
}

passkey_bf16() {
  local D=(--tasks passkey --depths random --dtype bfloat16)
  run passkey-64k-bf16 all 20 "${D[@]}" --lengths 64k \
    --methods homer-ownleaf,homer,truncate,bm25,homer-focus-leaf,ntk,yarn,linear
  run passkey-32k-bf16 all 20 "${D[@]}" --lengths 32k --methods homer-ownleaf,linear,full,yarn
  run passkey-16k-plain-bf16 all 20 "${D[@]}" --lengths 16k --methods full
}

ablations() {
  run ablations all 20 --tasks passkey --depths random --dtype bfloat16 --lengths 8k,16k,32k,64k \
    --methods homer-ownleaf-uncal,homer-ownleaf-random
}

boundaries() {
  run boundaries all 7 --tasks passkey --depths "$BOUNDARY_DEPTHS" --lengths 32k \
    --methods homer-focus-leaf,homer-focus
}

multikey() {
  run multikey all 10 --tasks multikey --depths random --lengths 32k --methods homer-focus-leaf,homer-focus,homer,bm25
}

perplexity() {
  run perplexity-appended all 5 --tasks ppl --ppl-append 3840 --lengths 16k,64k --methods homer-ownleaf,homer,truncate
  run perplexity-paper all 5 --tasks ppl --lengths 16k,64k --methods homer-ownleaf,homer,truncate
}

report() {
  local DR=(--depths random --samples 20)
  join passkey passkey-drawn-depths-fp32
  render passkey-drawn-depths-fp32 "${DR[@]}" --tasks passkey --lengths 8k,16k,32k,64k --methods "$ALL_PASSKEY" \
    --paired-with homer-focus-leaf,homer-focus,homer-ownleaf,homer --yarn-calibration-samples 2
  join passkey-64k-bf16 passkey-64k-bf16
  render passkey-64k-bf16 "${DR[@]}" --tasks passkey --lengths 64k --dtype bfloat16 \
    --methods homer-focus-leaf,homer-ownleaf,homer,truncate,ntk,yarn,linear,bm25 \
    --paired-with homer-ownleaf,homer-focus-leaf
  join passkey-32k-bf16 passkey-32k-bf16
  render passkey-32k-bf16 "${DR[@]}" --tasks passkey --lengths 32k --dtype bfloat16 --methods homer-ownleaf,full,yarn,linear \
    --paired-with homer-ownleaf
  join passkey-16k-plain-bf16 passkey-16k-plain-bf16
  render passkey-16k-plain-bf16 "${DR[@]}" --tasks passkey --lengths 16k --dtype bfloat16 --methods full
  # the ablations pair with the default in the same precision: its bfloat16 records at 32k and 64k
  join ablations passkey-ablations-bf16
  cat "$R"/passkey-{32k,64k}-bf16/records.jsonl 2>/dev/null | grep -e '"method": "homer-ownleaf"' \
    >> "$R/passkey-ablations-bf16/records.jsonl" || true
  render passkey-ablations-bf16 "${DR[@]}" --tasks passkey --lengths 8k,16k,32k,64k --dtype bfloat16 \
    --methods homer-ownleaf,homer-ownleaf-uncal,homer-ownleaf-random --paired-with homer-ownleaf
  join boundaries passkey-leaf-boundaries-32k
  render passkey-leaf-boundaries-32k --depths "$BOUNDARY_DEPTHS" --samples 7 --tasks passkey --lengths 32k \
    --methods homer-focus-leaf,homer-focus --paired-with homer-focus-leaf
  join multikey multikey-32k
  render multikey-32k --depths random --samples 10 --tasks multikey --lengths 32k \
    --methods homer-focus-leaf,homer-focus,homer,bm25 --paired-with homer-focus-leaf
  join perplexity-appended perplexity-64k-appended
  render perplexity-64k-appended --samples 5 --tasks ppl --lengths 16k,64k --methods homer-ownleaf,homer,truncate
  join perplexity-paper perplexity-64k-paper-mode
  render perplexity-64k-paper-mode --samples 5 --tasks ppl --lengths 16k,64k --methods homer-ownleaf,homer,truncate
}

[[ $# -gt 0 ]] || { sed -n '2,27p' benchmarks/eval_cpu.sh; exit 2; }
for table in "$@"; do
  case $table in
    passkey) passkey ;;
    passkey-bf16) passkey_bf16 ;;
    ablations) ablations ;;
    boundaries) boundaries ;;
    multikey) multikey ;;
    perplexity) perplexity ;;
    report) report ;;
    *) echo "eval_cpu.sh: unknown table '$table' (passkey, passkey-bf16, ablations, boundaries, multikey, perplexity, report)" >&2
       exit 2 ;;
  esac
done
