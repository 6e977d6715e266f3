#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite on the CPU, then the engine tests on the oldest
# supported transformers. Extra arguments go to the main pytest run.
#
# By default the `slow` tests that take many minutes of the default model on long documents are
# left out, except the cookbook notebooks and the default-model conversion; HOMER_TEST_ALL=1 runs
# every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
export HOMER_COOKBOOK_TOKENS=${HOMER_COOKBOOK_TOKENS:-12000}
# pytest exits 5 when it collects no test: with `set -e` that fails the run, as it must.
if [ "${HOMER_TEST_ALL:-0}" = "1" ]; then
  .venv/bin/python -m pytest -q -ra "$@"
else
  .venv/bin/python -m pytest -q -ra -m "not slow" "$@"
  # the default model's slow tests only: the Qwen runs (present once scripts/fetch_models.sh ran)
  # take far longer on a CPU and belong to HOMER_TEST_ALL=1
  .venv/bin/python -m pytest -q -ra -m slow -k "not qwen" tests/test_default_model.py tests/test_cookbook.py
fi
bash scripts/test_min_versions.sh
