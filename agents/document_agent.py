"""A LangGraph agent that reads whole documents with HOMER and answers questions about them.

    python -m agents.document_agent --document PATH --question Q [--question Q ...]

Graph (``StateGraph`` + ``ToolNode``)::

    START -> agent --(tool calls)--> tools -> agent -> ... -> END

- Tools: ``open_document(path) -> id``, ``ask_document(document_id, question)``,
  ``list_documents()``. ``ask_document`` sends the WHOLE document plus the question to the
  LangChain ``HomerLLM`` (``documents=[text]``); the LLM's ``document_cache`` keeps the document's
  compressed state, so every question after the first reuses it (a cache hit, reported by LangChain
  as ``usage_metadata.input_token_details.cache_read``).
- State: messages, the ids of the documents opened in this conversation, and the active one.
  Never text or tensors (a checkpointer serializes the state; ``InMemorySaver`` by default keeps
  each ``thread_id``'s conversation across turns).
- Compression progress is streamed through the runtime's stream writer as custom events
  ``{"event": "progress", "document_id", "done", "total"}`` (``stream_mode="custom"``).
- Two drivers of the ``agent`` node. ``"direct"`` (default): a deterministic router, because a
  135M model cannot reliably choose tools: ``/open PATH`` calls open_document, ``/list`` calls
  list_documents, any other text calls ask_document on the active document, and a tool's result
  becomes the answer. ``"llm"``: the chat model itself, with the tools bound, decides (use a
  model that can call tools).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, ToolRuntime
from langgraph.types import Command

from .registry import DocumentRegistry

logger = logging.getLogger(__name__)

Mode = Literal["direct", "llm"]
PROGRESS_EVENT = "homer_progress"  # the custom LangChain event HomerLLM dispatches while compressing

SYSTEM_PROMPT = (
    "You answer questions about text documents. Tools: open_document(path) opens a file and returns "
    "its id; ask_document(document_id, question) reads the whole document and answers; "
    "list_documents() lists what is open. Always use ask_document for questions about a document."
)


def _merge_ids(left: list[str] | None, right: list[str] | None) -> list[str]:
    """Reducer of ``documents``: append new ids, keep order, no duplicates."""
    out = list(left or [])
    out += [i for i in (right or []) if i not in out]
    return out


class AgentState(TypedDict, total=False):
    """The graph state: serializable values only (ids, never document text or tensors)."""

    messages: Annotated[list[AnyMessage], add_messages]
    documents: Annotated[list[str], _merge_ids]
    active_document: str | None


class _ProgressForwarder(BaseCallbackHandler):
    """Turns HomerLLM's ``homer_progress`` events into stream-writer events (about every 5%)."""

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


def _with_handler(config: dict | None, handler: BaseCallbackHandler) -> dict:
    """The tool's run config with one more callback handler (keeps the parent's tracing)."""
    callbacks = (config or {}).get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        callbacks = callbacks.copy()
        callbacks.add_handler(handler, inherit=True)
    else:
        callbacks = [*(callbacks or []), handler]
    return {"callbacks": callbacks}


def make_tools(llm: BaseChatModel, registry: DocumentRegistry) -> list[BaseTool]:
    """The three document tools, closed over the answering LLM and the document registry."""

    @tool
    def open_document(path: str, runtime: ToolRuntime) -> Command:
        """Open a UTF-8 text file so that questions can be asked about it. Returns the document id."""
        try:
            doc = registry.open(path)
        except ValueError as err:
            return Command(update={"messages": [ToolMessage(f"error: {err}", tool_call_id=runtime.tool_call_id,
                                                            status="error")]})
        note = f"{doc.id} ({doc.name}, {doc.characters} characters)"
        return Command(update={
            "documents": [doc.id],
            "active_document": doc.id,
            "messages": [ToolMessage(note, tool_call_id=runtime.tool_call_id, artifact={"document_id": doc.id})],
        })

    @tool(response_format="content_and_artifact")
    def ask_document(document_id: str, question: str, runtime: ToolRuntime) -> tuple[str, dict]:
        """Answer a question about an open document; the whole document is read."""
        doc = registry.get(document_id)
        write = runtime.stream_writer or (lambda _: None)
        config = _with_handler(runtime.config, _ProgressForwarder(write, doc.id))
        start = time.perf_counter()
        reply = llm.invoke([HumanMessage(question)], config=config, documents=[doc.text])
        seconds = time.perf_counter() - start
        details = (reply.usage_metadata or {}).get("input_token_details", {})
        write({"event": "answer", "document_id": doc.id, "seconds": round(seconds, 3),
               "cache_read": int(details.get("cache_read", 0) or 0)})
        artifact = {"document_id": doc.id, "seconds": seconds, "usage_metadata": reply.usage_metadata,
                    "homer": reply.response_metadata.get("homer")}
        return str(reply.content).strip(), artifact

    @tool
    def list_documents(runtime: ToolRuntime) -> str:
        """List the documents opened in this conversation (id, name, characters), as JSON."""
        ids = (runtime.state or {}).get("documents", []) if isinstance(runtime.state, dict) else []
        rows = []
        for doc_id in ids:
            doc = registry.get(doc_id) if doc_id in registry else None
            rows.append({"id": doc_id, "name": doc.name if doc else None,
                         "characters": doc.characters if doc else None})
        return json.dumps(rows)

    return [open_document, ask_document, list_documents]


def _call(name: str, args: dict[str, Any]) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:12]}",
                                              "type": "tool_call"}])


def direct_router(state: AgentState) -> dict[str, Any]:
    """The deterministic driver: commands and questions to tool calls, tool results to answers."""
    last = state["messages"][-1]
    if isinstance(last, ToolMessage):
        artifact = last.artifact if isinstance(last.artifact, dict) else {}
        usage = artifact.get("usage_metadata")
        meta = {"homer": artifact["homer"]} if artifact.get("homer") else {}
        if last.name == "open_document" and last.status != "error":
            text = f"Opened {last.content}."
        else:
            text = str(last.content)
        return {"messages": [AIMessage(content=text, usage_metadata=usage, response_metadata=meta)]}
    text = str(last.content).strip()
    if text.startswith("/open "):
        return {"messages": [_call("open_document", {"path": text[len("/open "):].strip()})]}
    if text == "/list":
        return {"messages": [_call("list_documents", {})]}
    active = state.get("active_document")
    if not active:
        return {"messages": [AIMessage(content="No document is open: send '/open PATH' first.")]}
    return {"messages": [_call("ask_document", {"document_id": active, "question": text})]}


def _route(state: AgentState) -> str:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else END


def build_agent(
    llm: BaseChatModel,
    registry: DocumentRegistry | None = None,
    *,
    mode: Mode = "direct",
    agent_llm: BaseChatModel | None = None,
    checkpointer: Any | None = None,
):
    """The compiled graph.

    Args:
        llm: answers ``ask_document`` (a ``HomerLLM``, ideally with a ``document_cache``).
        registry: where opened documents live (a new one by default).
        mode: "direct" (deterministic router) or "llm" (``agent_llm`` chooses tools).
        agent_llm: the tool-calling model of "llm" mode (default: ``llm``).
        checkpointer: LangGraph checkpointer (default: a new ``InMemorySaver``; pass False for none).
    """
    if mode not in ("direct", "llm"):
        raise ValueError(f"mode must be 'direct' or 'llm', got {mode!r}")
    registry = registry if registry is not None else DocumentRegistry()
    tools = make_tools(llm, registry)
    if mode == "direct":
        agent = direct_router
    else:
        bound = (agent_llm or llm).bind_tools(tools)

        def agent(state: AgentState) -> dict[str, Any]:
            ids = state.get("documents") or []
            opened = ", ".join(f"{i} ({registry.get(i).name})" for i in ids if i in registry) or "none"
            system = SystemMessage(f"{SYSTEM_PROMPT}\nOpen documents: {opened}. "
                                   f"Active: {state.get('active_document') or 'none'}.")
            return {"messages": [bound.invoke([system, *state["messages"]])]}

    graph = StateGraph(AgentState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", _route, ["tools", END])
    graph.add_edge("tools", "agent")
    saver = InMemorySaver() if checkpointer is None else (checkpointer or None)
    return graph.compile(checkpointer=saver)


def run_turn(graph, text: str, thread_id: str, on_event: Callable[[dict], None] | None = None) -> AIMessage:
    """Send one user message, stream custom events to ``on_event``, return the final AIMessage."""
    config = {"configurable": {"thread_id": thread_id}}
    for mode, data in graph.stream({"messages": [HumanMessage(text)]}, config, stream_mode=["custom", "updates"]):
        if mode == "custom" and on_event is not None:
            on_event(data)
    final = graph.get_state(config).values["messages"][-1]
    if not isinstance(final, AIMessage):
        raise RuntimeError(f"the turn ended on a {type(final).__name__}, not an answer")
    return final


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agents.document_agent", description=__doc__.split("\n\n")[0])
    p.add_argument("--document", required=True, action="append", help="text file to open (repeatable)")
    p.add_argument("--question", required=True, action="append", help="question, answered in turn (repeatable)")
    p.add_argument("--model", default=None, help="model folder or hub id (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--reuse", choices=("agnostic", "leaf", "exact"), default="agnostic",
                   help="how the document cache reuses work across questions (homer_llm.reuse)")
    p.add_argument("--cache-bytes", type=int, default=2 * 1024**3, help="memory budget of the document cache")
    p.add_argument("--cache-dir", default=None, help="optional disk tier of the document cache")
    p.add_argument("--agent", choices=("direct", "llm"), default="direct",
                   help="who picks the tools: the deterministic router (default) or the LLM")
    p.add_argument("--thread", default="cli", help="conversation id for the checkpointer")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on a busy shared CPU; default: torch's choice)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from langchain_homer import HomerLLM

    from homer_llm.doc_cache import DocumentCache

    cache = DocumentCache(args.cache_bytes, disk_dir=args.cache_dir, mode=args.reuse)
    llm = HomerLLM(model=args.model, device=args.device, dtype=args.dtype, max_tokens=args.max_tokens,
                   temperature=0.0, document_cache=cache)
    graph = build_agent(llm, mode=args.agent)

    def show(event: dict) -> None:
        if args.quiet:
            return
        if event.get("event") == "progress":
            print(f"\r  compressing {event['document_id']}: {event['done']}/{event['total']} layer passes",
                  end="\n" if event["done"] >= event["total"] else "", file=sys.stderr, flush=True)

    for path in args.document:
        opened = run_turn(graph, f"/open {path}", args.thread, show)
        print(opened.content, flush=True)
        if not str(opened.content).startswith("Opened"):  # the tool reported an error
            print(json.dumps({**cache.stats(), "answer_seconds": []}))
            return 2
    seconds = []
    for i, question in enumerate(args.question, start=1):
        start = time.perf_counter()
        answer = run_turn(graph, question, args.thread, show)
        seconds.append(round(time.perf_counter() - start, 3))
        details = (answer.usage_metadata or {}).get("input_token_details", {})
        print(f"Q{i}: {question}")
        print(f"A{i}: {answer.content}")
        print(f"   ({seconds[-1]:.2f} s; cache_read={details.get('cache_read', 0)} "
              f"cache_creation={details.get('cache_creation', 0)} tokens)", flush=True)
    print(json.dumps({**cache.stats(), "answer_seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
