"""LlamaIndex chat messages -> the ``{"role", "content", ...}`` dicts a chat template renders.

Tool history is rendered the way the template expects (``homer_llm.tool_calls.ToolFormat``):
natively (``tool_calls`` on assistant messages, role ``tool``) when the template knows them,
otherwise as text in the model's tool format (assistant calls written out, tool results as
``<tool_response>`` user turns). Assistant tool calls are read from ``ToolCallBlock`` blocks (what
``HomerLLM`` writes and current LlamaIndex agents keep) or from ``additional_kwargs["tool_calls"]``
(OpenAI-shaped dicts or ``ToolSelection`` objects, as older integrations store them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.llm import ToolSelection

from homer_llm.tool_calls import ToolFormat, render_calls, render_tool_result

ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def _arguments(raw: Any) -> dict[str, Any]:
    """Tool arguments as a dict (JSON text is decoded; anything else is kept under "input")."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            return {"input": raw}
        return value if isinstance(value, dict) else {"input": value}
    return {} if raw is None else {"input": raw}


def _from_kwargs(item: Any) -> dict[str, Any] | None:
    """One entry of ``additional_kwargs["tool_calls"]`` as {"id", "name", "args"} (None: unreadable)."""
    if isinstance(item, ToolSelection):
        return {"id": item.tool_id, "name": item.tool_name, "args": dict(item.tool_kwargs)}
    if isinstance(item, ToolCallBlock):
        return {"id": item.tool_call_id or "", "name": item.tool_name, "args": _arguments(item.tool_kwargs)}
    if not isinstance(item, dict):
        item = getattr(item, "model_dump", lambda: None)()
        if not isinstance(item, dict):
            return None
    function = item.get("function") if isinstance(item.get("function"), dict) else item
    name = function.get("name")
    if not isinstance(name, str):
        return None
    args = function.get("arguments", function.get("args", function.get("tool_kwargs")))
    return {"id": str(item.get("id") or item.get("tool_id") or ""), "name": name, "args": _arguments(args)}


def message_tool_calls(message: ChatMessage) -> list[dict[str, Any]]:
    """The tool calls an assistant message carries, as ``{"id", "name", "args"}`` dicts."""
    blocks = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
    if blocks:
        return [{"id": b.tool_call_id or "", "name": b.tool_name, "args": _arguments(b.tool_kwargs)} for b in blocks]
    calls = message.additional_kwargs.get("tool_calls") or []
    if not isinstance(calls, list | tuple):
        return []
    return [c for c in (_from_kwargs(item) for item in calls) if c is not None]


def to_chat_dicts(messages: Sequence[ChatMessage], fmt: ToolFormat) -> list[dict[str, Any]]:
    """LlamaIndex ``messages`` as template dicts, tool history rendered for ``fmt``.

    Raises:
        TypeError: something that is not a LlamaIndex ChatMessage.
    """
    out: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for message in messages:
        if not isinstance(message, ChatMessage):
            raise TypeError(f"messages must be llama_index ChatMessage objects, got {type(message).__name__}")
        role = ROLES.get(message.role, str(message.role.value))
        text = message.content or ""
        if role == "assistant":
            out.append(_assistant(text, message_tool_calls(message), fmt, names_by_id))
        elif role == "tool":
            out.append(_tool_result(message, text, fmt, names_by_id))
        else:
            out.append({"role": role, "content": text})
    return out


def _assistant(text: str, calls: list[dict[str, Any]], fmt: ToolFormat, names_by_id: dict[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": "assistant", "content": text}
    for call in calls:
        if call["id"]:
            names_by_id[call["id"]] = call["name"]
    if calls and fmt.native_history:
        entry["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
            for c in calls
        ]
    elif calls:
        written = render_calls(fmt, calls)
        entry["content"] = f"{text}\n{written}" if text.strip() else written
    return entry


def _tool_result(message: ChatMessage, text: str, fmt: ToolFormat, names_by_id: dict[str, str]) -> dict[str, Any]:
    extra = message.additional_kwargs
    call_id = extra.get("tool_call_id")
    name = extra.get("name") or extra.get("tool_name") or names_by_id.get(str(call_id or ""))
    if fmt.native_history:
        entry: dict[str, Any] = {"role": "tool", "content": text, "name": name or ""}
        if call_id:
            entry["tool_call_id"] = str(call_id)
        return entry
    return {"role": "user", "content": render_tool_result(name, text)}
