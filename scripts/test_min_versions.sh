#!/usr/bin/env bash
# The engine against the OLDEST transformers pyproject claims (5.0.0), in its own venv.
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_TRANSFORMERS=$(sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
if [ ! -x .venv-min/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv-min
fi
PIP=".venv-min/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "torch==${HOMER_TORCH_VERSION:-2.13.0}" "transformers==${MIN_TRANSFORMERS}" safetensors tqdm gguf numpy pytest hypothesis
$PIP install -q --no-deps -e .
.venv-min/bin/python -c "import transformers; print('engine tests on transformers', transformers.__version__)"
exec .venv-min/bin/python -m pytest -q -p no:cacheprovider -o asyncio_mode=strict \
  tests/test_engine.py tests/test_schedule.py tests/test_calibration.py tests/test_generation.py tests/test_model.py \
  tests/test_spans.py tests/test_focus.py
