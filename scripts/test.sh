#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, CPU only, then the engine tests on the
# oldest supported transformers. Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# pytest exits 5 when it collects no test: with `set -e` that fails the run, as it must.
.venv/bin/python -m pytest -q -ra "$@"
bash scripts/test_min_versions.sh
