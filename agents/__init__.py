"""Sample agents over homer-llm. ``agents.document_agent``: a LangGraph agent that reads whole
documents with HOMER through the LangChain ``HomerLLM`` and reuses their compressed states across
questions with ``homer_llm.doc_cache.DocumentCache``."""

from .document_agent import AgentState, build_agent, direct_router, make_tools, run_turn
from .registry import Document, DocumentRegistry, document_id

__all__ = [
    "AgentState",
    "Document",
    "DocumentRegistry",
    "build_agent",
    "direct_router",
    "document_id",
    "make_tools",
    "run_turn",
]
