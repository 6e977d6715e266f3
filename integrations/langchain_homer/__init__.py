"""LangChain integration of homer-llm: ``HomerLLM``, a local chat model that takes whole documents.

    from langchain_homer import HomerLLM

Install with the ``langchain`` extra: ``pip install "homer-llm[langchain]"``.
"""

from .chat_models import DEFAULT_MODEL_NAME, PROGRESS_EVENT, HomerLLM
from .documents import DocumentSpan, find_document_span, join_documents
from .tools import ParsedOutput, ToolFormat, detect_tool_format, parse_tool_calls

__all__ = [
    "DEFAULT_MODEL_NAME",
    "PROGRESS_EVENT",
    "DocumentSpan",
    "HomerLLM",
    "ParsedOutput",
    "ToolFormat",
    "detect_tool_format",
    "find_document_span",
    "join_documents",
    "parse_tool_calls",
]
