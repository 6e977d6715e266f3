#!/usr/bin/env bash
# The whole GPU sweep in one device call (sized for < 8 minutes on one H200, start-up included),
# then every performance target printed as met / missed / unmeasured.
#
#   bash benchmarks/gpu_sweep.sh          # on a CUDA machine, from anywhere; writes under $OUT
#   bash benchmarks/gpu_sweep.sh --tiny   # the same steps on the CPU with the tiny config (< 1 minute)
#
# Steps (each its own process, JSON written row by row, so a step cut off by its time cap keeps
# the rows it measured and the next step still runs):
#   1. main: Llama-3-8B shape, random init, bf16, sdpa, 8k..1M doubling; rows homer (the library's
#      defaults: own-leaf merges, suffix re-read), homer-causal, plain (up to 64k) and homer-focus
#      (k = 2, leaf locator); time, peak memory above the weights, decode ms/token on each cache,
#      share of each row's own FLOP floor (bf16 matmul rate measured at the start).
#   2. growth: Llama-2-7B shape, homer only, 8k..1M (peak memory growth per doubling).
#   3. targets: python -m homer_llm.bench.targets over both JSONs.
#   4. (not with --tiny) tests/test_gpu.py, in the time that is left (+30 s).
# Files under $OUT (default results/gpu-sweep): env.txt, main.json, main.log, growth.json,
# growth.log, targets.json, targets.txt, gpu_tests.log (8 files; re-plot with
# `homer-llm bench --replot main.json --plot main.png`).
#
# Needs: python3 with torch (CUDA) and transformers 5 (the H200 image has both; nothing is
# installed or downloaded). PYTHON overrides the interpreter; SWEEP_BUDGET_S (default 440) caps
# the whole sweep, MAIN_S (default 300) the main step.
set -uo pipefail

TINY=0
case "${1:-}" in
  --tiny) TINY=1 ;;
  "") ;;
  *) echo "gpu_sweep.sh: unknown argument '$1' (use --tiny or nothing)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/gpu-sweep}
mkdir -p "$OUT"
# a rerun into the same folder must not judge the targets on an earlier run's rows
rm -f "$OUT"/{env.txt,main.json,main.log,growth.json,growth.log,targets.json,targets.txt,gpu_tests.log}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
START=$(date +%s)
BUDGET=${SWEEP_BUDGET_S:-440}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# A step cut at its cap exits 124 under timeout; the sweep reports it as 4, so that its own exit
# code never reads as the caller's time limit.
note() { if [ "$2" -eq 124 ]; then echo "$1 step cut at its time cap: its JSON (if any) holds the rows measured before the cut"; status=4;
         elif [ "$2" -ne 0 ]; then echo "$1 step exited $2"; status=$2; fi; }

if [ "$TINY" = 1 ]; then
  DEVICE=cpu MAIN=tiny GROWTH=tiny LENGTHS=256,512 LONG=512 MID=256 MAX_PLAIN=256 GROWTH_MIN_S=15
  COMMON=(--threads 1 --repeats 1 --warmup 0 --budget-s 1 --decode-tokens 1 --matmul-size 256)
  MAIN_S=${MAIN_S:-60}
else
  DEVICE=cuda MAIN=llama3-8b GROWTH=llama2-7b LENGTHS=8k,16k,32k,64k,128k,256k,512k,1M LONG=1M MID=64k
  MAX_PLAIN=64k GROWTH_MIN_S=120
  COMMON=(--dtype bf16 --repeats 3 --budget-s 4 --warmup 1 --decode-tokens 16)
  MAIN_S=${MAIN_S:-300}
fi

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  git rev-parse HEAD 2>/dev/null || true
  echo "sweep: tiny=$TINY main=$MAIN growth=$GROWTH lengths=$LENGTHS budget=${BUDGET}s python=$PY"
} > "$OUT/env.txt" 2>&1
# Versions, and a preflight: the package imports with this interpreter (a missing module is named
# here, not mid-sweep), and CUDA is visible unless --tiny.
if ! "$PY" -c "
import sys, torch, transformers
print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available()); print('transformers', transformers.__version__)
import homer_llm.bench.runner, homer_llm.bench.targets
assert sys.argv[1] == 'cpu' or torch.cuda.is_available(), 'no CUDA device visible (use --tiny on a CPU)'
" "$DEVICE" >>"$OUT/env.txt" 2>&1; then
  cat "$OUT/env.txt"; echo "gpu_sweep.sh: preflight failed with $PY (above)" >&2; exit 3
fi
cat "$OUT/env.txt"

status=0
cap=$(( $(left) - GROWTH_MIN_S )); [ "$cap" -gt "$MAIN_S" ] && cap=$MAIN_S
echo "== main: $MAIN, ${cap}s cap"
timeout "$cap" "$PY" -m homer_llm.bench -v --device "$DEVICE" --config "$MAIN" --lengths "$LENGTHS" \
  --methods homer,homer-causal,plain,homer-focus --max-plain-length "$MAX_PLAIN" "${COMMON[@]}" \
  --json "$OUT/main.json" > "$OUT/main.log" 2>&1
rc=$?; grep -v '^20[0-9][0-9]-' "$OUT/main.log"; note main "$rc"

cap=$(( $(left) - 10 ))
echo "== growth: $GROWTH, ${cap}s cap"
if [ "$cap" -gt 5 ]; then
  timeout "$cap" "$PY" -m homer_llm.bench -v --device "$DEVICE" --config "$GROWTH" --lengths "$LENGTHS" \
    --methods homer "${COMMON[@]}" --decode-tokens 0 --json "$OUT/growth.json" > "$OUT/growth.log" 2>&1
  rc=$?; grep -v '^20[0-9][0-9]-' "$OUT/growth.log"; note growth "$rc"
else
  echo "no time left for the growth step" | tee "$OUT/growth.log"
fi

echo "== targets"
"$PY" -m homer_llm.bench.targets "$OUT/main.json" "$OUT/growth.json" --long "$LONG" --mid "$MID" \
  --json "$OUT/targets.json" 2>&1 | tee "$OUT/targets.txt"
if [ "$TINY" = 0 ]; then
  cap=$(( $(left) + 30 ))
  echo "== CUDA tests (tests/test_gpu.py), ${cap}s cap"
  if [ "$cap" -gt 40 ]; then
    timeout "$cap" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/gpu_tests.log" 2>&1
    rc=$?; tail -5 "$OUT/gpu_tests.log"; note "CUDA tests" "$rc"
  else
    echo "no time left for the CUDA tests" | tee "$OUT/gpu_tests.log"
  fi
fi
echo "sweep took $(( $(date +%s) - START ))s; exit $status"
exit "$status"
