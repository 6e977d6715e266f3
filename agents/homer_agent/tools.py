"""The agent's document tools and the custom stream events they write.

Tools (LangChain ``BaseTool``; the runtime is injected by LangGraph's ``ToolNode``):

- ``open_document(path)``: reads an allowed UTF-8 file (``access.DocumentAccess``) and adds its
  reference to the state (``documents``, ``active_document``);
- ``ask_document(question, document_id="")``: sends the whole document and the question to the
  answering chat model (``HomerLLM(documents=[text])``); its document cache keeps the compressed
  state, so later questions about the same document skip the compression;
- ``list_documents()``: the documents of this conversation, as JSON.

Failures the model can act on (a refused path, an unknown id, a changed file, a document too long
for the model) raise ``ToolException``: the tool node turns them into a ``ToolMessage`` with
``status="error"``, which the model sees on its next step; they are never answers.

Custom stream events (``graph.stream(..., stream_mode="custom")``), each a dict with ``event``:

- ``{"event": "document_opened", "document_id", "name", "path", "characters"}``
- ``{"event": "progress", "document_id", "done", "total"}``: compression progress in layer
  passes, about every 5%; absent when the document cache already holds the document;
- ``{"event": "answer", "document_id", "seconds", "cache_read", "cache_creation"}``
- ``{"event": "tool_error", "tool", "error"}``
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, ToolException, tool
from langgraph.prebuilt import ToolRuntime
from langgraph.types import Command

from .registry import Document, DocumentRef, DocumentRegistry

PROGRESS_EVENT = "homer_progress"
"""The custom LangChain callback event HomerLLM dispatches while it compresses a document."""


class _ProgressForwarder(BaseCallbackHandler):
    """Turns HomerLLM's ``homer_progress`` callback events into stream-writer events (about every 5%)."""

    def __init__(self, write: Callable[[Any], None], document_id: str) -> None:
        self.write, self.document_id, self.last = write, document_id, -1

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name != PROGRESS_EVENT:
            return
        done, total = int(data["done"]), max(1, int(data["total"]))
        step = done * 20 // total
        if step != self.last or done == total:
            self.last = step
            self.write({"event": "progress", "document_id": self.document_id, "done": done, "total": total})


def _with_handler(config: Mapping[str, Any] | None, handler: BaseCallbackHandler) -> dict[str, Any]:
    """The tool's run config with one more callback handler (the parent's handlers, e.g.
    LangGraph's "messages" stream and tracing, are kept)."""
    callbacks = (config or {}).get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.copy()
        callbacks.add_handler(handler, inherit=True)
    else:
        callbacks = [*(callbacks or []), handler]
    return {"callbacks": callbacks}


def _writer(runtime: ToolRuntime) -> Callable[[Any], None]:
    return runtime.stream_writer or (lambda _: None)


def _state_documents(runtime: ToolRuntime) -> dict[str, DocumentRef]:
    state = runtime.state if isinstance(runtime.state, Mapping) else {}
    return dict(state.get("documents") or {})


def _fail(runtime: ToolRuntime, tool_name: str, message: str) -> ToolException:
    _writer(runtime)({"event": "tool_error", "tool": tool_name, "error": message})
    return ToolException(message)


def pick_document(refs: Mapping[str, DocumentRef], document_id: str, active: str | None) -> DocumentRef:
    """The reference ``document_id`` names among this conversation's documents.

    An empty id means the active document; a file name or path of exactly one open document is
    accepted too (small models often pass the name).

    Raises:
        KeyError: nothing matches (the message lists the open ids).
    """
    wanted = (document_id or "").strip()
    if not wanted:
        if active and active in refs:
            return refs[active]
        raise KeyError("no document is open in this conversation: call open_document(path) first")
    if wanted in refs:
        return refs[wanted]
    named = [r for r in refs.values() if wanted in (r.get("name"), r.get("path"))]
    if len(named) == 1:
        return named[0]
    known = ", ".join(f"{r['id']} ({r['name']})" for r in refs.values()) or "none"
    raise KeyError(f"unknown document id {wanted!r}; documents open in this conversation: {known}")


def make_tools(llm: BaseChatModel, registry: DocumentRegistry) -> list[BaseTool]:
    """The three document tools, closed over the answering chat model and the registry.

    Args:
        llm: answers ``ask_document``; called with ``documents=[text]`` (a ``HomerLLM``,
            ideally with a ``document_cache``).
        registry: reads and keeps the opened documents.
    """

    @tool
    def open_document(path: str, runtime: ToolRuntime) -> Command:
        """Open a UTF-8 text file so that questions can be asked about it. Returns the document id."""
        try:
            doc = registry.open(path)
        except ValueError as err:
            raise _fail(runtime, "open_document", str(err)) from None
        _writer(runtime)({"event": "document_opened", "document_id": doc.id, "name": doc.name,
                          "path": doc.path, "characters": doc.characters})
        note = f"{doc.id} ({doc.name}, {doc.characters} characters)"
        return Command(update={
            "documents": {doc.id: doc.ref()},
            "active_document": doc.id,
            "messages": [ToolMessage(note, tool_call_id=runtime.tool_call_id, name="open_document",
                                     artifact={"document_id": doc.id})],
        })

    @tool(response_format="content_and_artifact")
    def ask_document(question: str, runtime: ToolRuntime, document_id: str = "") -> tuple[str, dict]:
        """Answer a question about an open document (the whole document is read).

        Args:
            question: the question, in full.
            document_id: the id open_document returned (empty: the document opened last).
        """
        if not question.strip():
            raise _fail(runtime, "ask_document", "the question is empty")
        state = runtime.state if isinstance(runtime.state, Mapping) else {}
        try:
            ref = pick_document(_state_documents(runtime), document_id, state.get("active_document"))
            doc = registry.resolve(ref)
        except (KeyError, ValueError) as err:
            raise _fail(runtime, "ask_document", str(err.args[0] if isinstance(err, KeyError) else err)) from None
        return _answer(llm, doc, question, runtime)

    @tool
    def list_documents(runtime: ToolRuntime) -> str:
        """List the documents opened in this conversation (id, name, characters), as JSON."""
        rows = [{"id": r["id"], "name": r["name"], "characters": r["characters"]}
                for r in _state_documents(runtime).values()]
        return json.dumps(rows)

    tools = [open_document, ask_document, list_documents]
    for t in tools:
        t.handle_tool_error = True  # ToolException -> ToolMessage(status="error")
    return tools


def _collect(chunks: Iterator[AIMessageChunk]) -> AIMessageChunk:
    """The whole message of a chat-model stream (usage and metadata merged)."""
    reply: AIMessageChunk | None = None
    for chunk in chunks:
        reply = chunk if reply is None else reply + chunk
    if reply is None:
        raise ValueError("the model returned no output")
    return reply


def _answer(llm: BaseChatModel, doc: Document, question: str, runtime: ToolRuntime) -> tuple[str, dict]:
    # stream(), not invoke(): HomerLLM.stream hands its run's callbacks (the progress forwarder)
    # to the compression, and every token reaches LangGraph's "messages" stream as it is made

    write = _writer(runtime)
    config = _with_handler(runtime.config, _ProgressForwarder(write, doc.id))
    start = time.perf_counter()
    try:
        reply = _collect(llm.stream([HumanMessage(question)], config=config, documents=[doc.text]))
    except ValueError as err:  # e.g. the document does not fit the model, or it failed to load
        raise _fail(runtime, "ask_document", f"the model could not read {doc.id}: {err}") from None
    seconds = time.perf_counter() - start
    details = (reply.usage_metadata or {}).get("input_token_details", {})
    cache_read = int(details.get("cache_read", 0) or 0)
    cache_creation = int(details.get("cache_creation", 0) or 0)
    write({"event": "answer", "document_id": doc.id, "seconds": round(seconds, 3),
           "cache_read": cache_read, "cache_creation": cache_creation})
    artifact = {"document_id": doc.id, "seconds": seconds, "usage_metadata": reply.usage_metadata,
                "homer": reply.response_metadata.get("homer")}
    return str(reply.content).strip(), artifact
