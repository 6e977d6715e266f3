#!/usr/bin/env bash
# `homer-llm ask` on 32k-token passkey documents (4x the default model's 8k window): HOMER on the
# first command's document (scripts/demo.sh: seed 12, depth 50%) and on documents with the key at seeded random depths, and
# the plain model (--plain) on that document. One JSON line per run in $OUT/ask_passkey.jsonl
# (document seed, depth, key, method, answer, correct, seconds, peak memory); a table at the end.
#
#   bash benchmarks/ask_passkey.sh                  # HOMER on seeds 12 and 21-24, plain on seed 12
#   SEEDS="12" PLAIN_SEEDS="" bash benchmarks/ask_passkey.sh
#   ANSWER_PREFIX="The pass key is" bash benchmarks/ask_passkey.sh   # the same, with --answer-prefix
#   LAYOUT=instruction ANSWER_PREFIX="The pass key is" bash benchmarks/ask_passkey.sh   # eval's prompt
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
TOKENS=${TOKENS:-32000}
SEEDS=${SEEDS-12 21 22 23 24}
PLAIN_SEEDS=${PLAIN_SEEDS-12}
THREADS=${THREADS:-1}
ANSWER_PREFIX=${ANSWER_PREFIX:-}
PY=.venv/bin/python
mkdir -p "$OUT" /tmp/homer-ask-passkey
LOG="$OUT/ask_passkey.jsonl"
TASK="A pass key is hidden somewhere in the long text below, among many lines that do not matter. Find the pass key and remember it: you will be asked for it at the end."
# Where the task text goes: the system prompt (default, as in scripts/demo.sh) or, with
# LAYOUT=instruction, the user turn before the document (the layout of `homer-llm eval`).
LAYOUT=${LAYOUT:-system}
QUESTION="What is the pass key? Reply with the number only."

run() {  # run SEED METHOD
  local seed=$1 method=$2 depth doc key flags=()
  # seed 12 is scripts/demo.sh's document (depth 0.5); other seeds draw the depth.
  if [ "$seed" = 12 ]; then depth=0.5; else depth=$($PY -c "import random; print(round(random.Random($seed).random(), 3))"); fi
  doc=/tmp/homer-ask-passkey/passkey-$TOKENS-$seed.txt
  key=$($PY -m homer_agent.passkey --tokens "$TOKENS" --seed "$seed" --depth "$depth" --out "$doc" | sed 's/.*pass key //')
  [ "$method" = plain ] && flags=(--plain)
  if [ "$LAYOUT" = instruction ]; then flags+=(--instruction "$TASK"); method="$method+instruction"
  else flags+=(--system "$TASK"); fi
  [ -n "$ANSWER_PREFIX" ] && flags+=(--answer-prefix "$ANSWER_PREFIX") && method="$method+prefix"
  $PY -m homer_llm.cli ask --json --no-progress --threads "$THREADS" "${flags[@]}" --document "$doc" \
    "$QUESTION" > /tmp/homer-ask-passkey/out.json
  $PY - "$seed" "$depth" "$key" "$method" >> "$LOG" <<'EOF'
import datetime, json, re, sys
seed, depth, key, method = sys.argv[1:]
out = json.load(open("/tmp/homer-ask-passkey/out.json"))
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
row = {"seed": int(seed), "depth": float(depth), "key": key, "method": method,
       "correct": re.search(rf"(?<!\d){key}(?!\d)", out["answer"]) is not None, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
       "cpu": cpu, **out}
print(json.dumps(row))
EOF
  tail -1 "$LOG"
}

for seed in $SEEDS; do run "$seed" homer; done
for seed in $PLAIN_SEEDS; do run "$seed" plain; done
$PY - "$LOG" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| seed | depth | method | answer | correct | input tokens | cache tokens | seconds | peak memory |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['seed']} | {r['depth']:.0%} | {r['method']} | {r['answer'].strip()[:30]!r} | {r['correct']} | "
          f"{r['input_tokens']} | {r['cache_tokens']} | {r['seconds']:.0f} | {r['peak_memory_bytes'] / 1e9:.2f} GB |")
EOF
