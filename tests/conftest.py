"""Shared fixtures. Every test runs offline: the hub is disabled and caches go to a temp dir."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: tiny models run fastest single-threaded (thread hand-off
    dominates on busy shared cores). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from tiny import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture
def two_threads():
    """Two torch threads for one test: the real models use both cores."""
    from tiny import torch_threads

    with torch_threads(2):
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Calibration tables and document caches go to a per-session temp dir, never ~/.cache.

    The embedded default model is the exception: its converted folder is shared (HOMER_LLM_MODELS)
    so the suite converts it at most once.
    """
    monkeypatch.setenv("HOMER_LLM_CACHE", str(tmp_path_factory.getbasetemp() / "homer-cache"))


@pytest.fixture
def tokenizer():
    from tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def tiny_homer(tokenizer):
    """A HomerModel over a tiny llama (window 256, so chunk_len 128) with the tiny tokenizer."""
    from tiny import tiny_model

    from homer_llm import HomerModel

    model = tiny_model("llama", vocab=len(tokenizer))
    return HomerModel(model, tokenizer, name="tiny-llama")
