#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv (scripts/setup.sh), write a passkey document of
# 32000 tokens (4x the default model's 8k window; the key at half depth) and ask the embedded
# default model for the key through HOMER. The first run also converts the model and builds its
# calibration table (both cached under ~/.cache/homer-llm).
#
#   bash scripts/demo.sh [TOKENS] [SEED]      # defaults: 32000 12; the document: DOC (/tmp/passkey-TOKENS.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${1:-32000}
SEED=${2:-12}
DOC=${DOC:-/tmp/passkey-$TOKENS.txt}
TASK="A pass key is hidden somewhere in the long text below, among many lines that do not matter. \
Find the pass key and remember it: you will be asked for it at the end."
bash scripts/setup.sh
.venv/bin/python -m homer_agent.passkey --tokens "$TOKENS" --seed "$SEED" --out "$DOC"
.venv/bin/homer-llm ask --document "$DOC" --system "$TASK" "What is the pass key? Reply with the number only."
