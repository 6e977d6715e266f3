"""Where the optional tool-capable test models are, for tests that skip without them."""

from __future__ import annotations

from pathlib import Path

from homer_llm.extra_models import FETCH_HINT, model_path

QWEN_SKIP = f"the Qwen2.5-Coder test model is not fetched; run `{FETCH_HINT}`"


def qwen_path(size: str) -> Path | None:
    """The converted Qwen2.5-Coder-Instruct folder for ``size`` ("0.5b" or "1.5b"), or None."""
    return model_path(size)
