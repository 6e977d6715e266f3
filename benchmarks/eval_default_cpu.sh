#!/usr/bin/env bash
# Long-context quality of the default model (SmolLM2-135M-Instruct, 8k window) on a CPU, in stages
# that share one results folder (--resume skips what is already there), most informative first.
# Every stage has a wall-clock budget; a stage cut short is resumed by running it again.
# Render the table / JSON / plot from whatever has run so far (also while a stage is running):
#   .venv/bin/homer-llm eval --out results/eval-cpu --report-only
# Measured cost on a busy shared 2-core Xeon (fp32, 1 torch thread), passkey, seconds per sample:
#   HOMER 146 / 220 / 367 / 432 at 8k / 16k / 32k / 64k; plain 8k prefill 189; plain 16k 606 (so
#   plain 32k and 64k, and the RoPE-scaled plain baselines there, are out of reach of a CPU budget).
# Results so far: benchmarks/eval_results_cpu.md
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/eval-cpu}
# Stages 1-26 ran before session 8 made HOMER read the question afresh after the tree
# (HomerConfig.reread_suffix); --merged-suffix keeps them as they ran, so --resume continues their
# folders (a folder refuses records made with the other setting). Stage 27 runs the new default.
EVAL=(.venv/bin/homer-llm eval --out "$OUT" --resume --threads 1 --lengths 8k,16k,32k,64k --depths 50,25,75,0,100
      --merged-suffix)
# session 5: eight 16k passkey samples, all at depth 25 % (give each variant its own --out)
D25=(.venv/bin/homer-llm eval --resume --threads 1 --depths 25 --tasks passkey --lengths 16k --samples 8
     --call-seconds 900 --max-seconds 1800 --merged-suffix)
# session 8: the default (question reread after the tree) on the drawn depths of stages 22-26
REREAD=(.venv/bin/homer-llm eval --resume --threads 1 --depths random --tasks passkey --methods homer
        --call-seconds 900)
STAGE=${1:-all}

# 1. passkey: the plain model (inside the window, and at 2x), then HOMER against truncation and
#    BM25 retrieval at every length, one sample per length
if [[ $STAGE == 1 || $STAGE == all ]]; then
  "${EVAL[@]}" --tasks passkey --methods full --lengths 8k,16k --samples 1 --call-seconds 1500 --max-seconds 2400
  "${EVAL[@]}" --tasks passkey --methods homer,truncate,bm25 --samples 1 --call-seconds 2000 --max-seconds 3600
fi
# 2. passkey: RoPE scaling baselines (affordable at 2x only), HOMER ablations, HOMER + YaRN
#    (a one-sample bias table for its 8k-token YaRN chunks: eight would cost ~25 CPU minutes)
if [[ $STAGE == 2 || $STAGE == all ]]; then
  "${EVAL[@]}" --tasks passkey --methods yarn,ntk,linear --lengths 8k,16k --samples 1 --call-seconds 1500 --max-seconds 4000
  "${EVAL[@]}" --tasks passkey --methods homer-uncal,homer-random,homer-yarn --samples 1 \
    --yarn-calibration-samples 1 --call-seconds 2000 --max-seconds 5400
fi
# 4. the cells issue 3's targets compare, with several samples (one 1-thread job, ~2 CPU hours):
#    in-window accuracy (8k) against 4x (32k), variable tracking against BM25, perplexity at 8x
if [[ $STAGE == 4 ]]; then
  "${EVAL[@]}" --tasks passkey --methods homer,bm25,truncate,full --lengths 8k --samples 5 --call-seconds 900 --max-seconds 2400
  "${EVAL[@]}" --tasks passkey --methods homer,bm25,truncate --lengths 32k --samples 5 --call-seconds 900 --max-seconds 2700
  "${EVAL[@]}" --tasks vartrack --methods homer,bm25 --lengths 16k --samples 3 --call-seconds 900 --max-seconds 1500
  "${EVAL[@]}" --tasks ppl --ppl-sink 0 --methods homer,truncate --lengths 64k --samples 1 --call-seconds 1500 --max-seconds 1800
fi
# 5. the rest of the matrix that a CPU session affords, as two 1-thread jobs (5a and 5b can run at once)
if [[ $STAGE == 5a ]]; then
  "${EVAL[@]}" --tasks ppl --ppl-sink 0 --methods homer,truncate --lengths 64k --samples 1 --call-seconds 1500 --max-seconds 1800
  "${EVAL[@]}" --tasks passkey --methods homer-uncal,homer-random --lengths 32k --samples 5 --call-seconds 900 --max-seconds 1800
  "${EVAL[@]}" --tasks multikey,multivalue --methods homer,bm25 --lengths 16k --samples 3 --call-seconds 900 --max-seconds 1200
fi
if [[ $STAGE == 5b ]]; then
  "${EVAL[@]}" --tasks passkey --methods homer,bm25,truncate --lengths 16k,64k --samples 5 --call-seconds 900 --max-seconds 2400
  "${EVAL[@]}" --tasks passkey --methods yarn,ntk,linear --lengths 16k --samples 3 --call-seconds 900 --max-seconds 2700
fi
# 6. HOMER at 8x with five samples; the plain model at 2x and, inside its window, on the harder tasks
#    (is a task within the 135M model's reach at all?)
if [[ $STAGE == 6a ]]; then
  "${EVAL[@]}" --tasks passkey --methods homer --lengths 64k --samples 5 --call-seconds 900 --max-seconds 1500
  "${EVAL[@]}" --tasks multikey,multivalue --methods homer,bm25 --lengths 16k --samples 3 --call-seconds 600 --max-seconds 900
fi
if [[ $STAGE == 6b ]]; then
  "${EVAL[@]}" --tasks passkey --methods full --lengths 16k --samples 3 --call-seconds 900 --max-seconds 900
  "${EVAL[@]}" --tasks vartrack,multikey,multivalue --methods full --lengths 8k --samples 3 --call-seconds 600 --max-seconds 900
fi
# 7. perplexity at 8x with the most recent tokens kept whole as HOMER's suffix (separate folders:
#    the method is still called homer there), and at 2x
if [[ $STAGE == 7 ]]; then
  for r in 1024 2048; do
    .venv/bin/homer-llm eval --out "$OUT-ppl-recent$r" --resume --threads 1 --tasks ppl --ppl-sink 0 --methods homer \
      --lengths 64k --samples 1 --ppl-recent $r --call-seconds 900 --max-seconds 900
  done
  "${EVAL[@]}" --tasks ppl --ppl-sink 0 --methods homer,truncate --lengths 16k --samples 1 --call-seconds 600 --max-seconds 600
  .venv/bin/homer-llm eval --out "$OUT-chunk6144" --threads 2 --tasks ppl --ppl-sink 0 --methods homer,truncate --lengths 64k \
    --samples 1 --chunk-len 6144 --call-seconds 900 --max-seconds 900
fi
# 8. (session 3) HOMER + YaRN at every length (its own 2-chunk bias table over 8k-token YaRN chunks),
#    dynamic NTK (the strongest RoPE baseline at 2x) with more samples at 16k and at 4x, and the other
#    plain-cost baselines at 4x with one sample each
if [[ $STAGE == 8 ]]; then
  "${EVAL[@]}" --tasks passkey --methods homer-yarn --samples 3 --yarn-calibration-samples 2 \
    --call-seconds 1500 --max-seconds 3600
  "${EVAL[@]}" --tasks passkey --methods ntk --lengths 16k --samples 5 --call-seconds 900 --max-seconds 1200
  "${EVAL[@]}" --tasks passkey --methods ntk --lengths 32k --samples 2 --call-seconds 2400 --max-seconds 3000
  "${EVAL[@]}" --tasks passkey --methods yarn,linear,full --lengths 32k --samples 1 --call-seconds 2400 --max-seconds 4000
fi
# 9. (session 3) word-level pruning on the cells where token pruning cut numbers, and on passkey
if [[ $STAGE == 9 ]]; then
  "${EVAL[@]}" --tasks multikey,multivalue --methods homer-word --lengths 16k --samples 3 --call-seconds 900 --max-seconds 1500
  "${EVAL[@]}" --tasks passkey --methods homer-word --lengths 16k,32k --samples 5 --call-seconds 900 --max-seconds 1800
fi
# 10. (session 3) perplexity at 8x on three samples: HOMER as is, and HOMER compressing all but the
#     last 3840 context tokens, which then run whole after the 4096-token cache (4096 + 3840 + 256
#     scored = the 8192 window); plain last-3840 baselines from benchmarks/ppl_variants.py
if [[ $STAGE == 10 ]]; then
  .venv/bin/homer-llm eval --out "$OUT-ppl-append3840" --resume --threads 1 --tasks ppl --ppl-sink 0 --lengths 64k \
    --methods homer,truncate --samples 3 --ppl-append 3840 --call-seconds 1500 --max-seconds 3000
  "${EVAL[@]}" --tasks ppl --ppl-sink 0 --methods homer,truncate --lengths 64k --samples 3 --call-seconds 1500 --max-seconds 2000
  .venv/bin/python benchmarks/ppl_variants.py --length 64k --samples 3 --rows window,last3840 --out results/ppl-variants/64k.jsonl
  .venv/bin/python benchmarks/ppl_variants.py --length 16k --samples 3 --rows window,last3840,append3840,homer \
    --out results/ppl-variants/16k.jsonl
fi
# 11. (session 3) passkey samples 6-10 of the main comparison (HOMER, truncation, BM25; plain in its window)
if [[ $STAGE == 11 ]]; then
  "${EVAL[@]}" --tasks passkey --methods homer,truncate,bm25 --samples 10 --call-seconds 900 --max-seconds 5400
  "${EVAL[@]}" --tasks passkey --methods full --lengths 8k --samples 10 --call-seconds 900 --max-seconds 1200
fi
# 12. (session 3) needle survival (records' needle_kept), token against word pruning, on multi-key
#     (7-digit values) and passkey at 4x; own folder, since earlier records predate needle_kept
if [[ $STAGE == 12 ]]; then
  .venv/bin/homer-llm eval --out "$OUT-needle" --resume --threads 1 --depths 50,25,75,0,100 --tasks multikey \
    --methods homer,homer-word --lengths 16k --samples 5 --call-seconds 900 --max-seconds 1800
  .venv/bin/homer-llm eval --out "$OUT-needle" --resume --threads 1 --depths 50,25,75,0,100 --tasks passkey \
    --methods homer,homer-word --lengths 32k --samples 3 --call-seconds 900 --max-seconds 1800
fi
# 13. (session 3) perplexity at 8x, appended mode with a 2048-token final cache (fewer compressed
#     fragments in front of the 3840 recent tokens)
if [[ $STAGE == 13 ]]; then
  .venv/bin/homer-llm eval --out "$OUT-ppl-append3840-cache2048" --resume --threads 1 --tasks ppl --ppl-sink 0 --lengths 64k \
    --methods homer,truncate --samples 3 --ppl-append 3840 --cache-len 2048 --call-seconds 1500 --max-seconds 3000
fi
# 14. (session 4) dynamic NTK, the strongest RoPE baseline, against HOMER: ten samples at 2x and
#     one at 8x (a 64k plain prefill: 47 minutes on one thread, measured)
if [[ $STAGE == 14 ]]; then
  "${EVAL[@]}" --tasks passkey --methods ntk --lengths 16k --samples 10 --call-seconds 900 --max-seconds 2400
  "${EVAL[@]}" --tasks passkey --methods ntk --lengths 64k --samples 1 --call-seconds 5400 --max-seconds 5400
fi
# 15. (session 4) perplexity at 2x and 8x with the shared 4-token sink (--ppl-sink, default 4):
#     appended mode (last 3840 context tokens whole after the cache) and the paper's mode
if [[ $STAGE == 15 ]]; then
  .venv/bin/homer-llm eval --out "$OUT-ppl-sink-append3840" --resume --threads 1 --tasks ppl --lengths 16k,64k \
    --methods homer,truncate --samples 5 --ppl-append 3840 --call-seconds 1500 --max-seconds 4200
  .venv/bin/homer-llm eval --out "$OUT-ppl-sink" --resume --threads 1 --tasks ppl --lengths 16k,64k \
    --methods homer --samples 5 --call-seconds 1500 --max-seconds 3600  # last window: the folder above
fi
# 16. (session 4) passkey samples 11-20 where the targets compare HOMER with BM25 and the in-window model
if [[ $STAGE == 16 ]]; then
  "${EVAL[@]}" --tasks passkey --methods homer,bm25 --lengths 16k,64k --samples 20 --call-seconds 900 --max-seconds 5400
  "${EVAL[@]}" --tasks passkey --methods homer,full --lengths 8k --samples 20 --call-seconds 900 --max-seconds 1800
fi
# 17. (session 5) the plain-cost baselines never run at 4x: YaRN, linear and the plain model at 32k,
#     one sample each, then a second (each a 32k plain prefill, 13-30 CPU minutes on one thread)
if [[ $STAGE == 17 ]]; then
  "${EVAL[@]}" --tasks passkey --methods yarn,linear,full --lengths 32k --samples 1 --call-seconds 2400 --max-seconds 5400
  "${EVAL[@]}" --tasks passkey --methods yarn,linear,full --lengths 32k --samples 2 --call-seconds 2400 --max-seconds 5400
fi
# 18. (session 5) the 16k depth-25% passkey misses: eight fresh samples, all at depth 25%, for HOMER,
#     word pruning and BM25, then HOMER with other schedules (chunk length, warm-up layers)
if [[ $STAGE == 18 ]]; then
  "${D25[@]}" --out "$OUT-d25" --methods homer,homer-word,bm25
  "${D25[@]}" --out "$OUT-d25-chunk2048" --methods homer --chunk-len 2048
  # chunk 2048 answered 0/8 with the default 11 warm-up layers (3 layers per tree level); in one ad hoc
  # sample each, 6 (4 per level) answered right and 16 (2 per level) wrong: so warm-up at both chunk lengths
  "${D25[@]}" --out "$OUT-d25-warmup6" --methods homer --warmup-layers 6
  "${D25[@]}" --out "$OUT-d25-chunk2048-warmup6" --methods homer --chunk-len 2048 --warmup-layers 6
  "${D25[@]}" --out "$OUT-d25-warmup16" --methods homer --warmup-layers 16
fi
# 19. (session 5) the two schedules that answered 8/8 at 16k depth 25 % in stage 18, on the main
#     comparison's 20 samples at 16k (all depths); own folders: the method is still called homer
#     (a later --out / --lengths overrides EVAL's)
if [[ $STAGE == 19a ]]; then
  "${EVAL[@]}" --out "$OUT-16k-chunk2048-warmup6" --tasks passkey --methods homer --lengths 16k --samples 20 \
    --chunk-len 2048 --warmup-layers 6 --call-seconds 900 --max-seconds 2400
fi
if [[ $STAGE == 19b ]]; then
  "${EVAL[@]}" --out "$OUT-16k-warmup16" --tasks passkey --methods homer --lengths 16k --samples 20 \
    --warmup-layers 16 --call-seconds 900 --max-seconds 2400
fi
# 19c. 16 warm-up layers at 8x (tree height 5: 2 layers per level), first five samples
if [[ $STAGE == 19c ]]; then
  "${EVAL[@]}" --out "$OUT-64k-warmup16" --tasks passkey --methods homer --lengths 64k --samples 5 \
    --warmup-layers 16 --call-seconds 900 --max-seconds 1500
fi
# 20. (session 5) stage 18's layouts with a 4x larger calibration set (32 chunks instead of 8)
if [[ $STAGE == 20 ]]; then
  "${D25[@]}" --out "$OUT-d25-calib32" --methods homer --calibration-samples 32
fi
# 21. (session 6) does stage 19's tuned 16k schedule (chunk 2048 + 6 warm-up layers) hold at 4x and
#     8x, on the main comparison's samples (default: 10/10 at 32k, 5/5 on the first five at 64k)?
#     Then the ablations' empty cells at 16k and 64k on the main samples; then, one sample each, the
#     RoPE-scaled plain baselines at 64k (~47 CPU minutes a sample). 21a and 21b can run at once.
if [[ $STAGE == 21a ]]; then
  "${EVAL[@]}" --out "$OUT-chunk2048-warmup6" --tasks passkey --methods homer --lengths 32k --samples 10 \
    --chunk-len 2048 --warmup-layers 6 --call-seconds 900 --max-seconds 2400
  "${EVAL[@]}" --out "$OUT-chunk2048-warmup6" --tasks passkey --methods homer --lengths 64k --samples 5 \
    --chunk-len 2048 --warmup-layers 6 --call-seconds 900 --max-seconds 2400
  "${EVAL[@]}" --tasks passkey --methods yarn --lengths 64k --samples 1 --call-seconds 4200 --max-seconds 4200
fi
if [[ $STAGE == 21b ]]; then
  "${EVAL[@]}" --tasks passkey --methods homer-uncal,homer-random --lengths 16k --samples 10 --call-seconds 900 --max-seconds 2400
  "${EVAL[@]}" --tasks passkey --methods homer-uncal,homer-random --lengths 64k --samples 3 --call-seconds 900 --max-seconds 2400
  "${EVAL[@]}" --tasks passkey --methods linear --lengths 64k --samples 1 --call-seconds 4200 --max-seconds 4200
fi
# 22. (session 6) HOMER against BM25 and truncation at 16k on 20 independent samples: each sample its
#     own seeded needle depth (--depths random), not the depth cycle, whose passkey samples at one
#     depth share one layout (truncation ran on the first four samples too, then was dropped: an 8k
#     plain prefill per sample doubled the stage's time)
if [[ $STAGE == 22 ]]; then
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods homer,bm25 \
    --lengths 16k --samples 20 --call-seconds 900 --max-seconds 3600
fi
# 22w. word-level pruning on stage 22's samples (held out for it: word pruning was built in session 3,
#      these samples were first drawn in session 6)
if [[ $STAGE == 22w ]]; then
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods homer-word \
    --lengths 16k --samples 20 --call-seconds 900 --max-seconds 3000
fi
# 23. (session 6) stage 22 at 4x: HOMER and BM25 on ten random-depth samples at 32k
if [[ $STAGE == 23 ]]; then
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods homer,bm25 \
    --lengths 32k --samples 10 --call-seconds 900 --max-seconds 2400
fi
# 23b. the plain model inside its window on the same drawn depths (the in-window reference of the 4x target)
if [[ $STAGE == 23b ]]; then
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods full \
    --lengths 8k --samples 10 --call-seconds 900 --max-seconds 1200 --threads 2
fi
# 24. (session 7) the 4x comparison on 20 drawn depths: HOMER and BM25 at 32k and the plain model at
#     8k on samples 10-19 (samples 0-13 also ran on an H100, with the same verdicts wherever both
#     ran); 24a and 24b run at once, one thread each
if [[ $STAGE == 24a ]]; then
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods homer \
    --lengths 32k --samples 20 --call-seconds 900 --max-seconds 3900
fi
if [[ $STAGE == 24b ]]; then
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods full \
    --lengths 8k --samples 20 --call-seconds 900 --max-seconds 2100
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods bm25 \
    --lengths 32k --samples 20 --call-seconds 900 --max-seconds 2100
fi
# 25. (session 7) the strongest RoPE baseline at 2x on the drawn depths: dynamic NTK on ten samples
#     at 16k (the H100 run has one sample per RoPE baseline beyond 8k: float32 GQA ran out of memory)
if [[ $STAGE == 25 ]]; then
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods ntk \
    --lengths 16k --samples 10 --call-seconds 1200 --max-seconds 4200
fi
# 26. (session 7) the one cell of the matrix never run anywhere: the plain model at 64k (8x its
#     window), one drawn-depth sample (about an hour on one CPU thread)
if [[ $STAGE == 26 ]]; then
  "${EVAL[@]}" --out "$OUT-random-depths" --depths random --tasks passkey --methods full \
    --lengths 64k --samples 1 --call-seconds 5400 --max-seconds 5400
fi
# 27. (session 8) the question read afresh after the tree (the new default). 27c answers stage 24's
#     twenty 32k samples both ways from one compression each (benchmarks/suffix_probe.py: the
#     averaged suffix, as stage 24 ran, and the reread one); 27a and 27b run the eval with the new
#     default at 8x, and at 2x and 1x, one thread each, at once
if [[ $STAGE == 27a ]]; then
  "${REREAD[@]}" --out "$OUT-reread-64k" --lengths 64k --samples 10 --max-seconds 3300
fi
if [[ $STAGE == 27b ]]; then
  "${REREAD[@]}" --out "$OUT-reread" --lengths 16k --samples 20 --max-seconds 2400
  "${REREAD[@]}" --out "$OUT-reread" --lengths 8k --samples 20 --max-seconds 1500
  # one 32k sample through the eval: must give 27c's reread answer for sample 0
  "${REREAD[@]}" --out "$OUT-reread" --lengths 32k --samples 1 --max-seconds 600
fi
# 27d/27e: HOMER + YaRN (8192-token chunks, so a 64k tree is as tall as HOMER's at 32k, where the
#     reread suffix helped) at 8x with the reread and with the averaged suffix, one thread each,
#     the same 2-chunk bias table (eight 8k chunks cost ~25 CPU minutes)
if [[ $STAGE == 27d ]]; then
  "${REREAD[@]}" --out "$OUT-reread-yarn" --methods homer-yarn --yarn-calibration-samples 2 --lengths 64k \
    --samples 9 --max-seconds 2400
fi
if [[ $STAGE == 27e ]]; then
  "${REREAD[@]}" --out "$OUT-merged-yarn" --methods homer-yarn --yarn-calibration-samples 2 --lengths 64k \
    --samples 9 --max-seconds 2400 --merged-suffix
fi
if [[ $STAGE == 27c ]]; then
  .venv/bin/python benchmarks/suffix_probe.py --length 32k --samples "$(seq -s, 0 19)" | tee results/suffix-probe-32k.txt
fi
# 28. (session 9) the 8x cell on twenty drawn depths: HOMER (question read afresh, the default),
#     HOMER + YaRN (8192-token chunks, 2-chunk table as in 27d) and BM25 at 64k, then HOMER + YaRN at
#     32k; each sample set split over two 1-thread processes (--first-sample), joined by stage 28j
S9=(.venv/bin/homer-llm eval --resume --threads 1 --depths random --tasks passkey --call-seconds 1500)
S9Y=("${S9[@]}" --methods homer-yarn --yarn-calibration-samples 2)
if [[ $STAGE == 28a ]]; then
  "${S9Y[@]}" --out "$OUT-s9-yarn-a" --lengths 64k --samples 10 &
  "${S9Y[@]}" --out "$OUT-s9-yarn-b" --lengths 64k --first-sample 10 --samples 20 &
  wait
fi
if [[ $STAGE == 28b ]]; then
  "${S9[@]}" --out "$OUT-s9-homer-b" --methods homer --lengths 64k --first-sample 9 --samples 20
  "${S9[@]}" --out "$OUT-s9-homer-a" --methods homer --lengths 64k --samples 9
  "${S9[@]}" --out "$OUT-s9-bm25" --methods bm25 --lengths 64k --samples 20
fi
if [[ $STAGE == 28c ]]; then
  "${S9Y[@]}" --out "$OUT-s9-yarn32-a" --lengths 32k --samples 10 &
  "${S9Y[@]}" --out "$OUT-s9-yarn32-b" --lengths 32k --first-sample 10 --samples 20 &
  wait
fi
# 28n: the strongest RoPE baseline at 2x on the other ten drawn depths (stage 25 ran samples 0-9), and
#     HOMER (question read afresh) at 2x on all twenty
if [[ $STAGE == 28n ]]; then
  "${S9[@]}" --out "$OUT-s9-ntk16" --methods ntk --lengths 16k --first-sample 10 --samples 20 &
  "${S9[@]}" --out "$OUT-s9-homer16" --methods homer --lengths 16k --samples 20 &  # session 8's records were not kept
  wait
fi
# 28s: HOMER + YaRN at 2x (two 8192-token leaves) and HOMER at 1x (records of session 8's 27b were not kept)
if [[ $STAGE == 28s ]]; then
  "${S9Y[@]}" --out "$OUT-s9-yarn16" --lengths 16k --samples 20 &
  "${S9[@]}" --out "$OUT-s9-homer8" --methods homer --lengths 8k --samples 20 &
  wait
fi
if [[ $STAGE == 28j ]]; then  # join the split folders into one table (records are per sample; order is free)
  J="$OUT-s9"
  mkdir -p "$J"
  cat "$OUT"-s9-{homer,yarn,yarn32}-{a,b}/records.jsonl "$OUT"-s9-{bm25,ntk16,homer16,yarn16,homer8}/records.jsonl \
    > "$J/records.jsonl"
  # the same samples from session 7 (transformers 5.23): dynamic NTK at 16k, samples 0-9 (stage 25),
  # and the plain model inside its window, 8k, samples 0-19 (stages 23b/24b); on a fresh clone that
  # folder is committed as benchmarks/results/eval-cpu-random-depths: copy it to $OUT-random-depths first
  grep -e '"method": "ntk", "length": 16384' -e '"method": "full", "length": 8192' \
    "$OUT-random-depths/records.jsonl" >> "$J/records.jsonl"
  .venv/bin/homer-llm eval --out "$J" --report-only --methods homer,homer-yarn,full,ntk,bm25 --tasks passkey --lengths 8k,16k,32k,64k \
    --samples 20 --depths random --yarn-calibration-samples 2 --threads 1
fi
# Session 10 (stage 29): the strongest RoPE baseline at 4x on the drawn depths (dynamic NTK had only
#     three cycled samples at 32k), and a deeper leaf at 8x: with the default W = 11 a 64k tree (32
#     leaves, height 5) runs only 15 layers per leaf where 8k-32k run 18; W = 16 gives 20 (2 per level)
if [[ $STAGE == 29n ]]; then
  "${S9[@]}" --out "$OUT-s10-ntk32-a" --methods ntk --lengths 32k --samples 5 --call-seconds 2400 --max-seconds 6000 &
  "${S9[@]}" --out "$OUT-s10-ntk32-b" --methods ntk --lengths 32k --first-sample 5 --samples 10 --call-seconds 2400 \
    --max-seconds 6000 &
  wait
fi
if [[ $STAGE == 29w ]]; then
  "${S9[@]}" --out "$OUT-s10-w16-64k" --methods homer --lengths 64k --samples 20 --warmup-layers 16 --max-seconds 5400
fi
# 29f: focus (HomerConfig.focus_leaves = 2: the tree locates two leaves, the plain model reads them
#     whole) on the same drawn depths, 8x first, then 4x, 2x, 1x; two processes share the sample
#     set and stop together at END (epoch seconds; default: 95 minutes from the start)
if [[ $STAGE == 29f ]]; then
  END=${END:-$(( $(date +%s) + 5700 ))}
  focus() {  # $1: first sample, $2: end sample, $3: folder suffix
    for L in 64k 32k 16k 8k; do
      left=$(( END - $(date +%s) )); (( left > 60 )) || break
      "${S9[@]}" --out "$OUT-s10-focus-$3" --methods homer-focus --lengths $L --first-sample "$1" --samples "$2" \
        --max-seconds $left
    done
  }
  focus 0 10 a &
  focus 10 20 b &
  wait
fi
# 29m: focus beyond passkey: multi-key (a 7-digit value of one key among distractor keys) at 4x,
#     ten drawn-depth samples, HOMER and BM25 on the same samples
if [[ $STAGE == 29m ]]; then
  MK=(.venv/bin/homer-llm eval --resume --threads 1 --depths random --tasks multikey --methods homer,homer-focus,bm25
      --lengths 32k --call-seconds 900 --max-seconds 2400)
  "${MK[@]}" --out "$OUT-s10-mk32-a" --samples 5 &
  "${MK[@]}" --out "$OUT-s10-mk32-b" --first-sample 5 --samples 10 &
  wait
  mkdir -p "$OUT-s10-mk32"
  cat "$OUT"-s10-mk32-{a,b}/records.jsonl > "$OUT-s10-mk32/records.jsonl"
  .venv/bin/homer-llm eval --out "$OUT-s10-mk32" --report-only --methods homer,homer-focus,bm25 --tasks multikey \
    --lengths 32k --samples 10 --depths random --threads 1
fi
# 29j: one table of session 10's records with session 9's on the same samples (on a fresh clone
#     session 9's joined folder is committed as benchmarks/results/eval-cpu-s9: copy it to $OUT-s9)
if [[ $STAGE == 29j ]]; then
  J="$OUT-s10"
  mkdir -p "$J"
  cat "$OUT"-s10-{focus,ntk32}-{a,b}/records.jsonl "$OUT-s9/records.jsonl" > "$J/records.jsonl"
  # BM25 at 16k and 32k on the same samples (sessions 6-7; benchmarks/results/eval-cpu-random-depths)
  grep -e '"method": "bm25", "length": 16384' -e '"method": "bm25", "length": 32768' \
    "$OUT-random-depths/records.jsonl" >> "$J/records.jsonl"
  .venv/bin/homer-llm eval --out "$J" --report-only --methods homer,homer-focus,homer-yarn,full,ntk,bm25 \
    --tasks passkey --lengths 8k,16k,32k,64k --samples 20 --depths random --yarn-calibration-samples 2 --threads 1
fi
# Session 11 (stage 30): focus with its new margin (HomerConfig.focus_margin = 256: neighbouring text
#     read on each side of a chosen leaf) on the same drawn depths, 8x first, and the remaining
#     baselines on those samples, so every method of the issue has a cell there: truncation (keep
#     the last window) at 2x-8x, YaRN and linear RoPE (the plain model, rope factor = length /
#     window) at 2x (HOMER's 4x records: stage 30h); as far as END allows (epoch seconds; default
#     130 minutes from the first start; --resume keeps what ran); two 1-thread processes
if [[ $STAGE == 30 ]]; then
  END=${END:-$(( $(date +%s) + 7800 ))}
  cell() {  # $1 folder suffix, $2 method, $3 length, $4 first sample, $5 end sample
    local left=$(( END - $(date +%s) )); (( left > 120 )) || return 0
    "${S9[@]}" --out "$OUT-s11-$1" --methods "$2" --lengths "$3" --first-sample "$4" --samples "$5" \
      --call-seconds 2400 --max-seconds $left
  }
  focus() { for L in 64k 32k 16k 8k; do cell "focus-$1" homer-focus $L "$2" "$3"; done; }
  { cell trunc truncate 16k,32k,64k 0 20; focus a 0 10; cell linear16 linear 16k 0 10; } &
  { cell yarn16 yarn 16k 0 10; focus b 10 20; cell yarn16b yarn 16k 10 20; } &
  wait
fi
# 30l: (a third process beside stage 30, from 10:02 UTC) linear RoPE at 2x on the other ten samples
if [[ $STAGE == 30l ]]; then
  "${S9[@]}" --out "$OUT-s11-linear16b" --methods linear --lengths 16k --first-sample 10 --samples 20 \
    --call-seconds 2400 --max-seconds $(( ${END:-$(( $(date +%s) + 3180 ))} - $(date +%s) ))
fi
# 30h: (a third process from 10:20 UTC, once 30l ended) HOMER's 4x records on the drawn depths
if [[ $STAGE == 30h ]]; then
  "${S9[@]}" --out "$OUT-s11-homer32x" --methods homer --lengths 32k --samples 20 --call-seconds 2400 \
    --max-seconds $(( ${END:-$(( $(date +%s) + 2520 ))} - $(date +%s) ))
fi
# 30b: the margin's own case: needles at the leaf boundaries of a 32k prompt (8 leaves: depths k/8,
#     where the needle sentence can straddle the cut), focus with whole leaves (--focus-margin 0, as
#     session 10) and with the default margin, on the same seven samples
if [[ $STAGE == 30b ]]; then
  B=(.venv/bin/homer-llm eval --resume --threads 1 --tasks passkey --methods homer-focus --lengths 32k --samples 7
     --depths 12.5,25,37.5,50,62.5,75,87.5)
  "${B[@]}" --out "$OUT-s11-boundary-m0" --focus-margin 0
  "${B[@]}" --out "$OUT-s11-boundary-m256"
fi
# 30j: one table of every method on the drawn depths: session 11's folders with session 10's joined
#     records (on a fresh clone: copy benchmarks/results/eval-cpu-s10 to $OUT-s10 first); paired
#     tables for HOMER + focus and for HOMER against every other method
if [[ $STAGE == 30j ]]; then
  J="$OUT-s11"
  mkdir -p "$J"
  # session 10's focus records read whole leaves (margin 0): they stay in $OUT-s10's own table, and
  # homer-focus here is this session's (margin 256); the boundary runs (30b) are another sample set
  grep -v '"method": "homer-focus"' "$OUT-s10/records.jsonl" > "$J/records.jsonl"
  cat "$OUT"-s11-{trunc,linear16,linear16b,yarn16,yarn16b,homer32x,focus-a,focus-b}/records.jsonl >> "$J/records.jsonl"
  .venv/bin/homer-llm eval --out "$J" --report-only --paired-with homer-focus,homer \
    --methods homer-focus,homer,homer-yarn,full,truncate,yarn,ntk,linear,bm25 --tasks passkey \
    --lengths 8k,16k,32k,64k --samples 20 --depths random --yarn-calibration-samples 2 --threads 1
fi
# Session 12 (stage 31): the RoPE cells at 4x on the drawn depths, as far as END allows (epoch
#     seconds; default 135 minutes from the start; --resume keeps what ran): dynamic NTK on samples
#     10-19 (stage 29n ran 0-9) in one 1-thread process; YaRN's three missing 2x samples (17-19),
#     then YaRN at 4x from sample 0, in the other (each 32k sample is a plain 32k prefill, ~13 CPU
#     minutes). As run: YaRN at 4x was stopped as it began (11:41 UTC) and NTK after its sample 13
#     (12:19 UTC), to give the CPU to own-leaf merges (31o, 31p) and the leaf locator (31f, 31g)
if [[ $STAGE == 31 ]]; then
  END=${END:-$(( $(date +%s) + 8100 ))}
  cell() {  # $1 folder suffix, $2 method, $3 length, $4 first sample, $5 end sample
    local left=$(( END - $(date +%s) )); (( left > 120 )) || return 0
    "${S9[@]}" --out "$OUT-s12-$1" --methods "$2" --lengths "$3" --first-sample "$4" --samples "$5" \
      --call-seconds 2400 --max-seconds $left
  }
  cell ntk32b ntk 32k 10 20 &
  { cell yarn16c yarn 16k 17 20; cell yarn32 yarn 32k 0 20; } &
  wait
fi
# 31o: (a third process; the YaRN 4x job of stage 31 was stopped as it began, to give it the CPU)
#     HOMER with own-leaf merges (HomerConfig.merge_attention="own-leaf") on the drawn depths, 8x
#     first, then 4x
if [[ $STAGE == 31o ]]; then
  END=${END:-$(( $(date +%s) + 8100 ))}
  for L in 64k 32k; do
    left=$(( END - $(date +%s) )); (( left > 120 )) || break
    "${S9[@]}" --out "$OUT-s12-ownleaf" --methods homer-ownleaf --lengths $L --samples 20 --call-seconds 2400 \
      --max-seconds $left
  done
fi
# 31p: (from 12:19 UTC, in place of stage 31's NTK job, stopped after its sample 13) own-leaf merges
#     at 2x, then 1x, beside 31o
if [[ $STAGE == 31p ]]; then
  END=${END:-$(( $(date +%s) + 6000 ))}
  for L in 16k 8k; do
    left=$(( END - $(date +%s) )); (( left > 120 )) || break
    "${S9[@]}" --out "$OUT-s12-ownleaf-b" --methods homer-ownleaf --lengths $L --samples 20 --call-seconds 2400 \
      --max-seconds $left
  done
fi
# 31f: (a third process, in place of the locator probe once it had shown four 64k trees) focus with
#     the leaf locator (HomerConfig.focus_locator="leaf", method homer-focus-leaf) on the drawn
#     depths at 8x; then the cases the tree locator missed outside those samples: needles at the
#     32k leaf boundaries (stage 30b's seven) and multi-key at 4x (stage 29m's ten); then 1x, 4x, 2x
if [[ $STAGE == 31f ]]; then
  END=${END:-$(( $(date +%s) + 7200 ))}
  left() { echo $(( END - $(date +%s) )); }
  "${S9[@]}" --out "$OUT-s12-focusleaf" --methods homer-focus-leaf --lengths 64k --samples 20 --max-seconds "$(left)"
  (( $(left) > 120 )) && .venv/bin/homer-llm eval --resume --threads 1 --tasks passkey --methods homer-focus-leaf \
    --lengths 32k --samples 7 --depths 12.5,25,37.5,50,62.5,75,87.5 --out "$OUT-s12-boundary-leaf" \
    --max-seconds "$(left)"
  (( $(left) > 120 )) && .venv/bin/homer-llm eval --resume --threads 1 --depths random --tasks multikey \
    --methods homer-focus-leaf --lengths 32k --samples 10 --call-seconds 900 --out "$OUT-s12-mk32-leaf" \
    --max-seconds "$(left)"
  for L in 8k 32k 16k; do
    (( $(left) > 120 )) || break
    "${S9[@]}" --out "$OUT-s12-focusleaf" --methods homer-focus-leaf --lengths $L --samples 20 --max-seconds "$(left)"
  done
fi
# 31g: (from 13:09 UTC, once 31p ended) focus with the leaf locator at 2x, beside 31f
if [[ $STAGE == 31g ]]; then
  "${S9[@]}" --out "$OUT-s12-focusleaf-b" --methods homer-focus-leaf --lengths 16k --samples 20 \
    --max-seconds $(( ${END:-$(( $(date +%s) + 2760 ))} - $(date +%s) ))
fi
# 31j: one table of every method on the drawn depths, session 12's records joined with session 11's
#     (on a fresh clone: copy benchmarks/results/eval-cpu-s11 to $OUT-s11 first); paired tables for
#     both focus locators, HOMER and HOMER with own-leaf merges; the boundary and multi-key runs of
#     31f joined with sessions 11 and 10's on the same samples
if [[ $STAGE == 31j ]]; then
  J="$OUT-s12"
  mkdir -p "$J" "$J-boundary" "$J-mk32"
  cat "$OUT-s11/records.jsonl" "$OUT"-s12-{ntk32b,yarn16c,ownleaf,ownleaf-b,focusleaf,focusleaf-b}/records.jsonl > "$J/records.jsonl"
  .venv/bin/homer-llm eval --out "$J" --report-only --paired-with homer-focus-leaf,homer-focus,homer-ownleaf,homer \
    --methods homer-focus-leaf,homer-focus,homer-ownleaf,homer,homer-yarn,full,truncate,yarn,ntk,linear,bm25 \
    --tasks passkey --lengths 8k,16k,32k,64k --samples 20 --depths random --yarn-calibration-samples 2 --threads 1
  cat "$OUT-s11-boundary-m256/records.jsonl" "$OUT-s12-boundary-leaf/records.jsonl" > "$J-boundary/records.jsonl"
  .venv/bin/homer-llm eval --out "$J-boundary" --report-only --methods homer-focus-leaf,homer-focus --tasks passkey \
    --lengths 32k --samples 7 --depths 12.5,25,37.5,50,62.5,75,87.5 --threads 1 --paired-with homer-focus-leaf
  cat "$OUT-s10-mk32/records.jsonl" "$OUT-s12-mk32-leaf/records.jsonl" > "$J-mk32/records.jsonl"
  .venv/bin/homer-llm eval --out "$J-mk32" --report-only --methods homer-focus-leaf,homer-focus,homer,bm25 \
    --tasks multikey --lengths 32k --samples 10 --depths random --threads 1 --paired-with homer-focus-leaf
fi
# 32: (session 13) perplexity at 8x with own-leaf merges, the five samples of stage 15, appended mode
#     (last 3840 context tokens whole after the cache) and the paper's mode; then default HOMER on
#     sample 0 in appended mode again, to check that stage 15's records still hold for today's code
if [[ $STAGE == 32 ]]; then
  .venv/bin/homer-llm eval --out "$OUT-s13-ppl-ownleaf-append3840" --resume --threads 1 --tasks ppl --lengths 64k \
    --methods homer-ownleaf --samples 5 --ppl-append 3840 --call-seconds 1500 --max-seconds 3600
  .venv/bin/homer-llm eval --out "$OUT-s13-ppl-ownleaf" --resume --threads 1 --tasks ppl --lengths 64k \
    --methods homer-ownleaf --samples 5 --call-seconds 1500 --max-seconds 3000
  .venv/bin/homer-llm eval --out "$OUT-s13-ppl-homer-append3840" --resume --threads 1 --tasks ppl --lengths 64k \
    --methods homer --samples 1 --ppl-append 3840 --call-seconds 1500 --max-seconds 1500
fi
# 33a/33b: (session 13) the leaf locator's rule is now leaf-mass (the question's attention share on
#     the leaf's text inside the leaf's own pass; session 12's leaf-lse in the s12 folders): the
#     boundary needles and multi-key at 32k, the 32k cell (20 samples; s12 had 6), then 64k
if [[ $STAGE == 33a ]]; then
  END=${END:-$(( $(date +%s) + 6000 ))}
  left() { echo $(( END - $(date +%s) )); }
  .venv/bin/homer-llm eval --resume --threads 1 --tasks passkey --methods homer-focus-leaf --lengths 32k --samples 7 \
    --depths 12.5,25,37.5,50,62.5,75,87.5 --call-seconds 2400 --out "$OUT-s13-boundary-mass" --max-seconds "$(left)"
  (( $(left) > 120 )) && .venv/bin/homer-llm eval --resume --threads 1 --depths random --tasks multikey \
    --methods homer-focus-leaf --lengths 32k --samples 10 --call-seconds 2400 --out "$OUT-s13-mk32-mass" \
    --max-seconds "$(left)"
  (( $(left) > 120 )) && "${S9[@]}" --out "$OUT-s13-focusmass" --methods homer-focus-leaf --lengths 32k --samples 20 \
    --call-seconds 2400 --max-seconds "$(left)"
fi
# 33c: (once 33a ended) the new rule at 2x and 1x, so its row has every length
if [[ $STAGE == 33c ]]; then
  END=${END:-$(( $(date +%s) + 4000 ))}
  for L in 16k 8k; do
    left=$(( END - $(date +%s) )); (( left > 120 )) || break
    "${S9[@]}" --out "$OUT-s13-focusmass-b" --methods homer-focus-leaf --lengths $L --samples 20 --call-seconds 2400 \
      --max-seconds $left
  done
fi
if [[ $STAGE == 33b ]]; then
  "${S9[@]}" --out "$OUT-s13-focusmass-64k" --methods homer-focus-leaf --lengths 64k --samples 20 --call-seconds 2400 \
    --max-seconds $(( ${END:-$(( $(date +%s) + 6000 ))} - $(date +%s) ))
fi
# 34a/34b: (session 13) the RoPE baselines at 4x on the drawn depths, as far as the budget goes
#     (each a 32k plain prefill, 11-13 CPU minutes here): dynamic NTK samples 14-19 (0-13 in
#     stages 30-31), then YaRN from sample 0 (34a); YaRN from sample 10 (34b)
if [[ $STAGE == 34a ]]; then
  END=${END:-$(( $(date +%s) + 6000 ))}
  "${S9[@]}" --out "$OUT-s13-ntk32c" --methods ntk --lengths 32k --first-sample 14 --samples 20 --call-seconds 2400 \
    --max-seconds $(( END - $(date +%s) ))
  left=$(( END - $(date +%s) )); (( left > 600 )) && "${S9[@]}" --out "$OUT-s13-yarn32a" --methods yarn --lengths 32k \
    --samples 10 --call-seconds 2400 --max-seconds $left
fi
if [[ $STAGE == 34c ]]; then  # (from 16:20, once 33c ended) YaRN from sample 5
  "${S9[@]}" --out "$OUT-s13-yarn32c" --methods yarn --lengths 32k --first-sample 5 --samples 10 --call-seconds 2400 \
    --max-seconds $(( ${END:-$(( $(date +%s) + 3000 ))} - $(date +%s) ))
fi
if [[ $STAGE == 34b ]]; then
  "${S9[@]}" --out "$OUT-s13-yarn32b" --methods yarn --lengths 32k --first-sample 10 --samples 20 --call-seconds 2400 \
    --max-seconds $(( ${END:-$(( $(date +%s) + 6000 ))} - $(date +%s) ))
fi
# 35j: (session 13) joined tables: perplexity at 8x with own-leaf merges beside stage 15's causal
#     HOMER and last window (appended and paper modes; on a fresh clone copy
#     benchmarks/results/eval-cpu-ppl-sink* to $OUT-ppl-sink* first); the leaf locator's new rule
#     (leaf-mass) on the drawn depths, the boundary needles and multi-key beside session 12's records
if [[ $STAGE == 35j ]]; then
  J="$OUT-s13"
  mkdir -p "$J-ppl-append3840" "$J-ppl" "$J" "$J-boundary" "$J-mk32"
  cat "$OUT-ppl-sink-append3840/records.jsonl" "$OUT-s13-ppl-ownleaf-append3840/records.jsonl" \
    > "$J-ppl-append3840/records.jsonl"
  grep '"truncate"' "$OUT-ppl-sink-append3840/records.jsonl" | cat - "$OUT-ppl-sink/records.jsonl" \
    "$OUT-s13-ppl-ownleaf/records.jsonl" > "$J-ppl/records.jsonl"
  for F in "$J-ppl-append3840" "$J-ppl"; do
    .venv/bin/homer-llm eval --out "$F" --report-only --methods homer-ownleaf,homer,truncate --tasks ppl \
      --lengths 16k,64k --samples 5 --threads 1
  done
  # session 12's joined records (committed) without its leaf-lse rows, with this session's leaf-mass ones
  R=benchmarks/results
  grep -v '"homer-focus-leaf"' "$R/eval-cpu-s12/records.jsonl" | cat - "$OUT"-s13-{focusmass,focusmass-b,focusmass-64k}/records.jsonl \
    "$OUT"-s13-{ntk32c,yarn32a,yarn32b,yarn32c}/records.jsonl > "$J/records.jsonl" 2>/dev/null || true
  .venv/bin/homer-llm eval --out "$J" --report-only --paired-with homer-focus-leaf,homer-focus,homer-ownleaf,homer \
    --methods homer-focus-leaf,homer-focus,homer-ownleaf,homer,homer-yarn,full,truncate,yarn,ntk,linear,bm25 \
    --tasks passkey --lengths 8k,16k,32k,64k --samples 20 --depths random --yarn-calibration-samples 2 --threads 1
  grep -v '"homer-focus-leaf"' "$R/eval-cpu-s12-boundary/records.jsonl" | cat - "$OUT-s13-boundary-mass/records.jsonl" \
    > "$J-boundary/records.jsonl"
  .venv/bin/homer-llm eval --out "$J-boundary" --report-only --methods homer-focus-leaf,homer-focus --tasks passkey \
    --lengths 32k --samples 7 --depths 12.5,25,37.5,50,62.5,75,87.5 --threads 1 --paired-with homer-focus-leaf
  grep -v '"homer-focus-leaf"' "$R/eval-cpu-s12-mk32/records.jsonl" | cat - "$OUT-s13-mk32-mass/records.jsonl" \
    > "$J-mk32/records.jsonl"
  .venv/bin/homer-llm eval --out "$J-mk32" --report-only --methods homer-focus-leaf,homer-focus,homer,bm25 \
    --tasks multikey --lengths 32k --samples 10 --depths random --threads 1 --paired-with homer-focus-leaf
fi
# 36a/36b: (session 14) the 8x cell in bfloat16, where this Xeon's AMX makes a 64k plain prefill
#     ~8 CPU minutes (50-60 in float32): dynamic NTK, the strongest RoPE baseline at 2x and 4x,
#     beside HOMER (own-leaf default and the published causal tree), focus, truncation and BM25,
#     all in bfloat16 on the same drawn depths; the cheap methods run first on each sample, so a run
#     cut short leaves whole paired samples. 36a: samples 0-9, 36b: samples 10-19 (one core each).
#     36c/36d: YaRN / linear RoPE at 8x in bfloat16 from sample 0, as far as the budget goes.
#     Budget: END (epoch seconds), else 2 hours (36a/36b) or 30 minutes (36c/36d) from now.
BF16=("${S9[@]}" --dtype bfloat16 --lengths 64k)
case $STAGE in
  36a) "${BF16[@]}" --call-seconds 2400 --methods homer-ownleaf,homer,truncate,bm25,homer-focus-leaf,ntk \
         --out "$OUT-s14-bf16-a" --samples 10 --max-seconds $(( ${END:-$(( $(date +%s) + 7200 ))} - $(date +%s) )) ;;
  36b) "${BF16[@]}" --call-seconds 2400 --methods homer-ownleaf,homer,truncate,bm25,homer-focus-leaf,ntk \
         --out "$OUT-s14-bf16-b" --first-sample 10 --samples 20 \
         --max-seconds $(( ${END:-$(( $(date +%s) + 7200 ))} - $(date +%s) )) ;;
  36c|36d) M=$([[ $STAGE == 36c ]] && echo yarn || echo linear)
    "${BF16[@]}" --call-seconds 1200 --methods $M --out "$OUT-s14-bf16-$M" --samples 20 \
      --max-seconds $(( ${END:-$(( $(date +%s) + 1800 ))} - $(date +%s) )) ;;
esac
# 36j: the joined table of 36a-36d (committed as benchmarks/results/eval-cpu-s14-bf16)
if [[ $STAGE == 36j ]]; then
  mkdir -p "$OUT-s14-bf16"
  cat "$OUT"-s14-bf16-{a,b,yarn,linear}/records.jsonl > "$OUT-s14-bf16/records.jsonl"
  .venv/bin/homer-llm eval --out "$OUT-s14-bf16" --report-only --paired-with homer-ownleaf,homer-focus-leaf \
    --methods homer-focus-leaf,homer-ownleaf,homer,truncate,ntk,yarn,linear,bm25 --tasks passkey --lengths 64k \
    --samples 20 --depths random --threads 1 --dtype bfloat16
fi
# 37a-37c: (session 15) the cells still thin or empty, in bfloat16 on the same drawn depths.
#     37a (one core): 4x: linear RoPE (factor 4) and the plain model on samples 0-19 (never run at
#     32k on the drawn depths), then YaRN's samples 12-19 (session 13 ran 0-11 in float32).
#     37c (after 37a, one core): HOMER's default (own-leaf) at 4x in bfloat16, so the 4x baselines
#     above pair with HOMER in one precision, then the plain model at 2x (16k; never run on the
#     drawn depths).
#     37b (one core): 8x: YaRN and linear RoPE (factor 8) on samples 3-19 (36c/36d ran 0-2),
#     alternating per sample so a run cut short leaves both methods on the same samples.
#     Budget: END (epoch seconds), else 2 hours from now. 37j joins them with 36's records.
B15=("${S9[@]}" --dtype bfloat16)  # S9 already sets --call-seconds 1500
left() { echo $(( ${END:-$(( $(date +%s) + 7200 ))} - $(date +%s) )); }
case $STAGE in
  37a) "${B15[@]}" --lengths 32k --methods linear,full --out "$OUT-s15-bf16-32k" --samples 20 --max-seconds "$(left)"
       (( $(left) > 300 )) && "${B15[@]}" --lengths 32k --methods yarn --out "$OUT-s15-bf16-32k-yarn" \
         --first-sample 12 --samples 20 --max-seconds "$(left)" ;;
  37c) "${B15[@]}" --lengths 32k --methods homer-ownleaf --out "$OUT-s15-bf16-32k-ownleaf" --samples 20 \
         --max-seconds "$(left)"
       (( $(left) > 300 )) && "${B15[@]}" --lengths 16k --methods full --out "$OUT-s15-bf16-16k" --samples 20 \
         --max-seconds "$(left)" ;;
  37b) "${B15[@]}" --lengths 64k --methods yarn,linear --out "$OUT-s15-bf16-64k" --first-sample 3 --samples 20 \
         --max-seconds "$(left)" ;;
esac
# 37j: (session 15) joined tables. 8x: every bfloat16 record (36a-36d, 37b). 4x in bfloat16: 37a/37c's
#     linear, plain, YaRN 12-19 and own-leaf. 2x: 37c's plain model alone (HOMER's 2x records are
#     float32, in eval-cpu-s13).
#     (The joined folders are named -s15-join-*: session 15 first named them like 37b's own folder,
#     and the join's `cat ... >` emptied 37b's records before reading them; 37b's verdicts survive
#     only in its log, committed as benchmarks/results/eval-cpu-s15-37b-log.txt.)
if [[ $STAGE == 37j ]]; then
  J="$OUT-s15-join"
  mkdir -p "$J-64k" "$J-32k"
  cat "$OUT"-s14-bf16-{a,b,yarn,linear}/records.jsonl "$OUT-s15-bf16-64k/records.jsonl" > "$J-64k/records.jsonl"
  .venv/bin/homer-llm eval --out "$J-64k" --report-only --paired-with homer-ownleaf,homer-focus-leaf \
    --methods homer-focus-leaf,homer-ownleaf,homer,truncate,ntk,yarn,linear,bm25 --tasks passkey --lengths 64k \
    --samples 20 --depths random --threads 1 --dtype bfloat16
  cat "$OUT"-s15-bf16-32k{,-yarn,-ownleaf}/records.jsonl > "$J-32k/records.jsonl"
  .venv/bin/homer-llm eval --out "$J-32k" --report-only --paired-with homer-ownleaf \
    --methods homer-ownleaf,full,yarn,linear --tasks passkey --lengths 32k \
    --samples 20 --depths random --threads 1 --dtype bfloat16
  if [[ -s "$OUT-s15-bf16-16k/records.jsonl" ]]; then
    .venv/bin/homer-llm eval --out "$OUT-s15-bf16-16k" --report-only --methods full --tasks passkey --lengths 16k \
      --samples 20 --depths random --threads 1 --dtype bfloat16
  fi
fi
# 38a/38b: (session 16) the ablations on the library's default (own-leaf merges) on the drawn depths,
#     in bfloat16, so each is paired with the default on the same samples and precision; then the
#     plain model at 8x (64k; one cycled sample before), samples split between the two cores.
#     38a (one core): homer-ownleaf-uncal at 8k-64k, then `full` at 64k on samples 0-9.
#     38b (one core): homer-ownleaf-random at 8k-64k, homer-ownleaf at 8k/16k in bfloat16 (32k/64k
#     ran in 37c and 36a/36b), then `full` at 64k on samples 10-19.
#     Budget: END (epoch seconds), else 2 hours from now. Same command base (B15) and budget (`left`)
#     as 37a-37c.
case $STAGE in
  38a) "${B15[@]}" --lengths 8k,16k,32k,64k --methods homer-ownleaf-uncal --out "$OUT-s16-bf16-uncal" --samples 20 \
         --max-seconds "$(left)"
       (( $(left) > 600 )) && "${B15[@]}" --lengths 64k --methods full --out "$OUT-s16-bf16-64k-full-a" \
         --samples 10 --max-seconds "$(left)" ;;
  38b) "${B15[@]}" --lengths 8k,16k,32k,64k --methods homer-ownleaf-random --out "$OUT-s16-bf16-random" \
         --samples 20 --max-seconds "$(left)"
       (( $(left) > 300 )) && "${B15[@]}" --lengths 8k,16k --methods homer-ownleaf --out "$OUT-s16-bf16-ownleaf" \
         --samples 20 --max-seconds "$(left)"
       (( $(left) > 600 )) && "${B15[@]}" --lengths 64k --methods full --out "$OUT-s16-bf16-64k-full-b" \
         --first-sample 10 --samples 20 --max-seconds "$(left)" ;;
esac
# 3. more samples and the other tasks, as far as the budget goes
if [[ $STAGE == 3 || $STAGE == all ]]; then
  "${EVAL[@]}" --tasks passkey,vartrack,multikey,multivalue,ppl --ppl-sink 0 \
    --methods homer,truncate,bm25,full,yarn,ntk,linear,homer-uncal,homer-random,homer-yarn \
    --samples 20 --yarn-calibration-samples 1 --call-seconds 900 --max-seconds 14400
fi
.venv/bin/homer-llm eval --out "$OUT" --report-only
