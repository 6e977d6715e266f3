"""LlamaIndex integration of homer-llm: ``from llama_index.llms.homer import HomerLLM``.

``HomerLLM`` is a LlamaIndex ``FunctionCallingLLM`` over a local Hugging Face model driven by
HOMER, advertising a context window far past the model's native one (tools, ``FunctionAgent``,
``ReActAgent`` and structured output included); ``HomerQueryEngine``, ``whole_document_index``
and ``WholeDocumentParser`` make LlamaIndex send whole documents in one call.
"""

from .base import DEFAULT_CONTEXT_WINDOW, HomerLLM, tree_capacity
from .document import DocumentSplit, split_document
from .query_engine import HomerQueryEngine, WholeDocumentParser, whole_document_index

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "DocumentSplit",
    "HomerLLM",
    "HomerQueryEngine",
    "WholeDocumentParser",
    "split_document",
    "tree_capacity",
    "whole_document_index",
]
