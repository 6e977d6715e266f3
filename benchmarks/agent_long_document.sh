#!/usr/bin/env bash
# The LangGraph document agent, model-driven, over a 32k-token document: one process opens it and
# asks two questions (the second from the document cache), a second process resumes the thread from
# the SQLite checkpoint and asks a third (the compressed state found again on disk).
#
#   bash benchmarks/agent_long_document.sh [OUT_FOLDER]
#
# Needs `bash scripts/fetch_models.sh 1.5b`. HOMER chunks of 4096 tokens emulate an 8k window; the
# hybrid read (the chat model's default) shrinks the chunk so a leaf fits after the cache, so the
# 32k-token document is read as 16 leaves of about 2,000 tokens merged up the tree. Writes the document, each
# process's stdout (answers and the JSON report) and stderr (progress) to OUT_FOLDER (default
# results/agent-long-document). env: MODEL (default the 1.5B), TOKENS (32000), THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/agent-long-document}
mkdir -p "$OUT"
MODEL=${MODEL:-$(.venv/bin/python -m homer_llm.extra_models path 1.5b)}
DOC="$OUT/field-notes.txt"
.venv/bin/python - "$MODEL" "${TOKENS:-32000}" "$DOC" <<'PY'
import sys
from transformers import AutoTokenizer
from homer_agent.passkey import build_document, door_code_needle, passkey_needle

model, tokens, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tok = AutoTokenizer.from_pretrained(model)
count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
needles = [(0.2, passkey_needle(71432)), (0.55, door_code_needle(5093)),
           (0.85, "The locker number is 318. Remember it. 318 is the locker number.")]
text = build_document(count, tokens, needles)
open(out, "w", encoding="utf-8").write(text)
print(f"{out}: {count(text)} tokens; pass key 71432 at 20%, door code 5093 at 55%, locker 318 at 85%")
PY
AGENT=(.venv/bin/homer-agent --model "$MODEL" --dtype float32 --chunk-len 4096 --threads "${THREADS:-1}"
       --checkpoint "$OUT/agent.sqlite" --thread field-notes --allow-root "$OUT")
rm -rf "$OUT/agent.sqlite" "$OUT/agent.sqlite.kv"
/usr/bin/time -v "${AGENT[@]}" --document "$DOC" --question "What is the pass key?" \
  --question "What is the door code?" >"$OUT/first.out" 2>"$OUT/first.err" || echo "first process: exit $?"
/usr/bin/time -v "${AGENT[@]}" --question "What is the locker number?" \
  >"$OUT/resumed.out" 2>"$OUT/resumed.err" || echo "resumed process: exit $?"
cat "$OUT/first.out" "$OUT/resumed.out"
