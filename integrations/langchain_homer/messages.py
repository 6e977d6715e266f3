"""LangChain messages -> the ``{"role", "content", ...}`` dicts a chat template renders.

Text only: images, audio, video and files raise ValueError (the supported models read text).
Tool history is rendered the way the template expects: natively (``tool_calls`` on assistant
messages, role ``tool``) when the template knows them, otherwise as text in the model's tool
format (assistant calls written out, tool results as ``<tool_response>`` user turns).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from .tools import (
    ToolFormat,
    render_calls,
    render_tool_result,
)

_TEXT_TYPES = {"text", "text-plain"}
_IGNORED_TYPES = {"tool_use", "tool_call", "tool_call_chunk", "thinking", "reasoning", "redacted_thinking",
                  "invalid_tool_call", "server_tool_call", "server_tool_result"}


def content_text(message: BaseMessage) -> str:
    """The text of a message; non-text blocks are refused, tool-call and reasoning blocks skipped.

    Raises:
        ValueError: a block the model cannot read (image, audio, video, file, ...).
    """
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in _TEXT_TYPES:
            parts.append(str(block.get("text", "")))
        elif kind in _IGNORED_TYPES:
            continue
        else:
            raise ValueError(
                f"HomerLLM reads text only; a {type(message).__name__} has a content block of type {kind!r}"
            )
    return "".join(parts)


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    args = call.get("args") or {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = {"input": args}
    return args


def to_chat_dicts(messages: Sequence[BaseMessage], fmt: ToolFormat) -> list[dict[str, Any]]:
    """LangChain ``messages`` as template dicts (tool history rendered for ``fmt``).

    Raises:
        ValueError: no messages, or a message with non-text content.
        TypeError: something that is not a LangChain message.
    """
    if not messages:
        raise ValueError("HomerLLM needs at least one message, got none")
    out: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for message in messages:
        if not isinstance(message, BaseMessage):
            raise TypeError(f"expected LangChain messages, got {type(message).__name__}")
        text = content_text(message)
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": text})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": text})
        elif isinstance(message, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": text}
            calls = list(message.tool_calls)
            for call in calls:
                if call.get("id"):
                    names_by_id[call["id"]] = call["name"]
            if calls and fmt.native_history:
                entry["tool_calls"] = [
                    {"id": c.get("id") or "", "type": "function",
                     "function": {"name": c["name"], "arguments": _arguments(c)}}
                    for c in calls
                ]
            elif calls:
                written = render_calls(fmt, [{"name": c["name"], "args": _arguments(c)} for c in calls])
                entry["content"] = f"{text}\n{written}" if text.strip() else written
            out.append(entry)
        elif isinstance(message, ToolMessage | FunctionMessage):
            call_id = getattr(message, "tool_call_id", None)
            name = message.name or names_by_id.get(call_id or "", None)
            if isinstance(message, ToolMessage) and message.status == "error" and not text.lower().startswith("error"):
                text = f"Error: {text}"
            if fmt.native_history:
                entry = {"role": "tool", "content": text, "name": name or ""}
                if call_id:
                    entry["tool_call_id"] = call_id
                out.append(entry)
            else:
                out.append({"role": "user", "content": render_tool_result(name, text)})
        elif isinstance(message, ChatMessage):
            out.append({"role": message.role, "content": text})
        else:
            raise TypeError(f"unsupported message type {type(message).__name__}")
    return out


def merge_same_roles(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join consecutive messages of the same role (for templates that demand alternation)."""
    merged: list[dict[str, Any]] = []
    for m in messages:
        if merged and merged[-1]["role"] == m["role"] and "tool_calls" not in m and "tool_calls" not in merged[-1] \
                and m["role"] != "tool":
            merged[-1] = {**merged[-1], "content": f"{merged[-1]['content']}\n\n{m['content']}"}
        else:
            merged.append(dict(m))
    return merged
