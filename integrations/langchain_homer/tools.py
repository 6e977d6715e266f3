"""Tool calling for LangChain: the shared text formats and parser, plus LangChain's tool objects.

The formats, prompts, forced-call prefills and the parser are framework-free and live in
``homer_llm.tool_calls`` (shared with the LlamaIndex adapter); they are re-exported here. This
module adds what depends on LangChain: converting LangChain tools to OpenAI tool dicts and
telling which bound tools only carry a final answer (``answer_tool_names``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from homer_llm.tool_calls import (
    FAMILIES,
    MARKERS,
    ParsedOutput,
    ToolFormat,
    ToolSpec,
    choice_instruction,
    close_json,
    decode_json,
    detect_tool_format,
    first_argument,
    forced_prefill,
    forced_stop,
    is_schema_echo,
    json_instruction,
    marker_start,
    name_candidates,
    name_prefix,
    new_call_id,
    normalize_tool_choice,
    object_opening,
    parse_tool_calls,
    render_calls,
    render_tool_result,
    repair_json,
    schema_errors,
    signature,
    tools_system_prompt,
)

__all__ = [
    "FAMILIES", "MARKERS", "ParsedOutput", "ToolFormat", "ToolSpec", "answer_tool_names", "choice_instruction",
    "close_json", "decode_json", "detect_tool_format", "first_argument", "forced_prefill", "forced_stop",
    "is_schema_echo", "json_instruction", "marker_start", "name_candidates", "name_prefix", "new_call_id",
    "normalize_tool_choice", "object_opening", "parse_tool_calls", "render_calls", "render_tool_result",
    "repair_json", "schema_errors", "signature", "to_openai_tool", "tools_system_prompt",
]


def to_openai_tool(tool: Any) -> dict[str, Any]:
    """An OpenAI tool dict for anything ``bind_tools`` accepts (dicts already in that shape pass through)."""
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool
    return convert_to_openai_tool(tool)


def _runs_something(tool: Any) -> bool:
    """Whether ``tool`` executes code when called (a tool), rather than only describing data (a schema)."""
    if isinstance(tool, StructuredTool):
        return tool.func is not None or tool.coroutine is not None
    if isinstance(tool, BaseTool):
        return True
    return callable(tool) and not isinstance(tool, type)


def answer_tool_names(tools: Sequence[Any], names: Sequence[str]) -> tuple[str, ...]:
    """Names of the bound tools that only carry a final answer, when ordinary tools are bound too.

    ``create_agent(response_format=...)`` binds its structured-output tool (a ``StructuredTool``
    with nothing to run) next to the agent's tools and forces ``tool_choice="any"`` on every turn;
    ``with_structured_output`` binds a schema class or dict. A schema bound next to runnable tools
    is such an answer tool; with no runnable tool among ``tools`` none is.
    """
    runs = [_runs_something(t) for t in tools]
    if not any(runs) or all(runs):
        return ()
    return tuple(n for n, r in zip(names, runs, strict=True) if not r)
