"""homer_agent: a LangGraph document agent over homer-llm.

The agent reads whole documents with HOMER through the LangChain ``HomerLLM`` and reuses their
compressed states across questions with ``homer_llm.doc_cache.DocumentCache``. The model chooses
the tools (``langchain.agents.create_agent``) when its chat template renders them; a scripted
router drives them otherwise. Files are read only under allowed folders (``DocumentAccess``).

    homer-agent --document PATH --question Q          # or: python -m homer_agent ...
    python -m homer_agent.passkey --tokens 32000 --out /tmp/passkey32k.txt
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_MAX_BYTES": "access", "DocumentAccess": "access", "DocumentAccessError": "access",
    "default_roots": "access",
    "default_cache_dir": "checkpoint", "sqlite_checkpointer": "checkpoint",
    "DocumentAgentMiddleware": "graph", "HomerAgentState": "graph", "Turn": "graph", "build_agent": "graph", "resolve_mode": "graph",
    "route_message": "graph", "run_turn": "graph", "supports_tool_calling": "graph",
    "system_prompt_for": "graph",
    "Document": "registry", "DocumentChangedError": "registry", "DocumentRef": "registry",
    "DocumentRegistry": "registry", "document_id": "registry", "MODES": "modes",
    "make_tools": "tools",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Imports on first use, so ``python -m homer_agent.passkey`` needs no LangChain."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'homer_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
