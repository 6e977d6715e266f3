"""The LangGraph document agent: model-driven graph, router fallback, state, tool errors, streaming.

The answering model is the real LangChain ``HomerLLM`` over a tiny random llama (so documents
really are compressed and cached); the tool-choosing model of the model-driven graph is scripted.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult

pytest.importorskip("langgraph")
pytest.importorskip("langchain.agents")
langchain_homer = pytest.importorskip("langchain_homer")

from homer_agent import (  # noqa: E402
    DocumentAccess,
    DocumentRegistry,
    build_agent,
    document_id,
    resolve_mode,
    run_turn,
    supports_tool_calling,
)

from homer_llm import HomerModel  # noqa: E402
from homer_llm.doc_cache import DocumentCache  # noqa: E402

DOC = "".join(f"Line {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7} coins.\n" for i in range(10))
TOOLS_TEMPLATE = (  # a ChatML template that renders tools (like Qwen2.5's hermes template)
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}"
    "\nCall with <tool_call>{\"name\": .., \"arguments\": ..}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_engine(template: str | None = None, window: int = 256) -> HomerModel:
    from tiny import tiny_engine

    return tiny_engine(layers=4, window=window, template=template, name="tiny-agent")


@pytest.fixture(scope="module")
def engine():
    return make_engine()


@pytest.fixture
def doc_file(tmp_path):
    path = tmp_path / "boxes.txt"
    path.write_text(DOC)
    return path


@pytest.fixture
def access(tmp_path):
    return DocumentAccess((tmp_path,))


def homer_llm(engine, cache):
    return langchain_homer.HomerLLM(engine=engine, max_tokens=3, document_cache=cache)


def tiny_cache(**kwargs):
    return DocumentCache(mode="agnostic", generic_suffix="\n\nKeep the facts.", **kwargs)


class ScriptedChatModel(BaseChatModel):
    """Plays scripted steps; each step is an AIMessage or a function of the messages it receives."""

    steps: list[Any]
    seen: list[list[BaseMessage]] = []
    bound: list[str] = []
    choices: list[Any] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools, **kwargs):
        self.bound = [t.name for t in tools]
        self.choices.append(kwargs.get("tool_choice"))
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.seen.append(list(messages))
        step = self.steps.pop(0)
        message = step(messages) if callable(step) else step
        return ChatResult(generations=[ChatGeneration(message=message)])


def call(name: str, args: dict, i: int) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"c{i}", "type": "tool_call"}])


def last_tool(messages: list[BaseMessage]) -> ToolMessage:
    return next(m for m in reversed(messages) if isinstance(m, ToolMessage))


def state_of(graph, thread: str) -> dict:
    return graph.get_state({"configurable": {"thread_id": thread}}).values


# ---------------------------------------------------------------------------------------- model-driven
def test_model_driven_agent_opens_asks_and_answers(engine, doc_file, access):
    doc_id = document_id(DOC)
    script = ScriptedChatModel(steps=[
        call("open_document", {"path": str(doc_file)}, 1),
        lambda msgs: call("ask_document", {"document_id": last_tool(msgs).artifact["document_id"],
                                           "question": "How many coins are in the blue box?"}, 2),
        # (the answer of ask_document ends the turn: no model call to paraphrase it)
        # second turn: another question; the document cache answers
        call("ask_document", {"document_id": doc_id, "question": "Which line mentions 49 coins?"}, 3),
    ])
    cache = tiny_cache()
    graph = build_agent(homer_llm(engine, cache), mode="model", agent_llm=script, access=access)
    assert {"model", "tools"} <= set(graph.get_graph().nodes)  # create_agent's loop
    events: list[dict] = []
    turn = run_turn(graph, "How many coins are in the blue box of boxes.txt?", "m", events.append)
    assert script.bound == ["open_document", "ask_document", "list_documents"]  # bound per model call
    assert turn.ok and turn.tool_calls == ("open_document", "ask_document")
    tool_result = [m for m in turn.messages if isinstance(m, ToolMessage)][-1]
    assert tool_result.status == "success" and turn.answer == tool_result.content
    assert script.choices == [None, None]  # no document open yet: the model chooses freely
    assert turn.usage["input_token_details"]["cache_creation"] > 0
    kinds = [e["event"] for e in events if "event" in e]  # (HomerLLM may add its own)
    assert kinds[:2] == ["tool_call", "document_opened"] and "progress" in kinds and kinds[-1] == "answer"
    # the model's second call saw the tool result and a system prompt listing the open document
    assert isinstance(script.seen[1][-1], ToolMessage)
    system = [m for m in script.seen[1] if isinstance(m, SystemMessage)][0]
    assert doc_id in system.content and f"Active document: {doc_id}" in system.content

    events.clear()
    again = run_turn(graph, "Which line mentions 49 coins?", "m", events.append)
    assert again.ok and again.tool_calls == ("ask_document",)
    assert not [e for e in events if e.get("event") == "progress"], "a cache hit must not recompress"
    assert again.usage["input_token_details"]["cache_read"] > 0
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (1, 1)
    assert script.choices[2] == "any"  # a document is open: the turn's first call must use a tool
    # history reached the model (checkpointer) and the state holds references, never the text
    assert any(isinstance(m, HumanMessage) and "blue box" in m.content for m in script.seen[2])
    state = state_of(graph, "m")
    ref = state["documents"][doc_id]
    assert ref["path"] == str(doc_file.resolve()) and len(ref["sha256"]) == 64 and ref["characters"] == len(DOC)
    assert state["active_document"] == doc_id
    assert DOC not in json.dumps([str(m.content) for m in state["messages"]]) and DOC not in json.dumps(ref)
    assert not script.steps


def test_the_model_driven_graph_runs_async_as_servers_run_it(engine, doc_file, access):
    import asyncio

    script = ScriptedChatModel(steps=[call("open_document", {"path": str(doc_file)}, 1),
                                      call("ask_document", {"question": "Which box is red?"}, 2)])
    graph = build_agent(homer_llm(engine, tiny_cache()), mode="model", agent_llm=script, access=access)
    config = {"configurable": {"thread_id": "async"}}
    state = asyncio.run(graph.ainvoke({"messages": [HumanMessage("Open the boxes and say which is red")]}, config))
    tools = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert [t.name for t in tools] == ["open_document", "ask_document"] and tools[-1].status == "success"
    assert state["messages"][-1].content == tools[-1].content and script.choices == [None, None]
    assert doc_file.name in state["documents"][document_id(DOC)]["path"]


def test_the_model_may_paraphrase_and_answer_without_tools_when_asked(engine, doc_file, access):
    script = ScriptedChatModel(steps=[
        AIMessage(content="Hello! Which document?"),
        call("open_document", {"path": str(doc_file)}, 1),
        call("ask_document", {"question": "Which box is red?"}, 2),
        lambda msgs: AIMessage(content=f"The document says: {last_tool(msgs).content}"),
    ])
    graph = build_agent(homer_llm(engine, tiny_cache()), mode="model", agent_llm=script, access=access,
                        require_tool=False, answer_directly=False)
    hello = run_turn(graph, "Hi", "p")
    assert hello.ok and hello.answer == "Hello! Which document?" and hello.tool_calls == ()
    turn = run_turn(graph, "Open the boxes and tell me which box is red", "p")
    assert turn.ok and turn.tool_calls == ("open_document", "ask_document")
    assert turn.answer == f"The document says: {turn.messages[-2].content}"
    assert script.choices == [None, None, None, None] and not script.steps


def test_tool_errors_reach_the_model_as_errors_and_fail_the_turn(engine, doc_file, access):
    script = ScriptedChatModel(steps=[
        call("open_document", {"path": "/etc/passwd"}, 1),
        lambda msgs: AIMessage(content=f"I could not open it ({last_tool(msgs).status})."),
        call("ask_document", {"document_id": "doc-000000000000", "question": "x"}, 2),
        lambda msgs: AIMessage(content="No such document."),
        call("open_document", {"path": str(doc_file)}, 3),
        AIMessage(content="Opened."),
    ])
    graph = build_agent(homer_llm(engine, tiny_cache()), mode="model", agent_llm=script, access=access)
    events: list[dict] = []
    refused = run_turn(graph, "Open /etc/passwd", "e", events.append)
    error = last_tool(script.seen[1])
    assert error.status == "error" and "outside the allowed folders" in error.content
    assert refused.answer == "I could not open it (error)." and not refused.ok
    assert refused.error.startswith("open_document: ") and "outside the allowed folders" in refused.error
    assert {"event": "tool_error", "tool": "open_document", "error": error.content} in events

    unknown = run_turn(graph, "Ask about doc-000000000000", "e")
    assert not unknown.ok and "unknown document id 'doc-000000000000'" in unknown.error
    # a later successful tool call makes the turn succeed again
    assert run_turn(graph, "Open the boxes", "e").ok


def test_malformed_tool_call_fails_the_turn(engine, access):
    bad = AIMessage(content="", invalid_tool_calls=[{"name": "ask_document", "args": "{oops", "id": "x",
                                                     "error": "invalid JSON", "type": "invalid_tool_call"}])
    graph = build_agent(homer_llm(engine, tiny_cache()), mode="model",
                        agent_llm=ScriptedChatModel(steps=[bad]), access=access)
    turn = run_turn(graph, "What is open?", "x")
    assert not turn.ok and "malformed tool call" in turn.error


def test_step_limit_fails_the_turn(engine, doc_file, access):
    loop = [call("list_documents", {}, i) for i in range(30)]
    graph = build_agent(homer_llm(engine, tiny_cache()), mode="model", agent_llm=ScriptedChatModel(steps=loop),
                        access=access)
    turn = run_turn(graph, "List forever", "loop", step_limit=6)
    assert not turn.ok and "did not finish within 6 steps" in turn.error


# ---------------------------------------------------------------------------------------- auto mode
def test_auto_mode_follows_the_chat_template(access):
    plain = langchain_homer.HomerLLM(engine=make_engine(), max_tokens=3)
    tools = langchain_homer.HomerLLM(engine=make_engine(TOOLS_TEMPLATE), max_tokens=3)
    assert not supports_tool_calling(plain) and supports_tool_calling(tools)
    assert resolve_mode("auto", plain) == "router" and resolve_mode("auto", tools) == "model"
    assert "router" in build_agent(plain, access=access).get_graph().nodes
    assert "model" in build_agent(tools, access=access).get_graph().nodes
    # a non-Homer chat model: tool calling when it implements bind_tools
    assert supports_tool_calling(ScriptedChatModel(steps=[]))
    with pytest.raises(ValueError, match="mode"):
        build_agent(plain, mode="llm")
    with pytest.raises(ValueError, match="not both"):
        build_agent(plain, DocumentRegistry(access), access=access)


def test_a_model_with_a_tools_template_drives_the_real_homer_llm(doc_file, access):
    """The model graph end to end on HomerLLM itself (tiny random weights: it writes no tool call,
    so the turn ends on its plain reply; what is checked is that the tools reached its prompt)."""
    # the window holds the agent's system prompt and tools (one token per character here)
    llm = langchain_homer.HomerLLM(engine=make_engine(TOOLS_TEMPLATE, window=4096), max_tokens=3,
                                   document_cache=tiny_cache())
    graph = build_agent(llm, access=access)
    seen: list[str] = []
    original = llm.get_engine().prepare_chat

    def spy(messages, document=None, **kwargs):
        seen.append(json.dumps(kwargs.get("tools") or []))
        return original(messages, document, **kwargs)

    llm.get_engine().prepare_chat = spy
    try:
        turn = run_turn(graph, f"Open {doc_file}", "real")
    finally:
        del llm.get_engine().prepare_chat
    assert turn.messages[-1].type == "ai" and seen and "open_document" in seen[0]


# ---------------------------------------------------------------------------------------- router
def test_router_fallback_reuses_the_document(engine, doc_file, access):
    cache = tiny_cache()
    graph = build_agent(homer_llm(engine, cache), access=access)  # auto: the tiny template renders no tools
    events: list[dict] = []
    opened = run_turn(graph, f"/open {doc_file}", "t1", events.append)
    doc_id = document_id(DOC)
    assert opened.ok and opened.answer.startswith(f"Opened {doc_id}")

    first = run_turn(graph, "How many coins are in the blue box?", "t1", events.append)
    progress = [e for e in events if e.get("event") == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] and progress[-1]["document_id"] == doc_id
    details = first.usage["input_token_details"]
    assert first.ok and details["cache_read"] == 0 and details["cache_creation"] > 0
    assert first.final.response_metadata["homer"]["document_tokens"] == details["cache_creation"]

    events.clear()
    second = run_turn(graph, "Which line mentions 49 coins?", "t1", events.append)
    assert not [e for e in events if e.get("event") == "progress"], "a cache hit must not recompress"
    assert second.usage["input_token_details"]["cache_read"] == details["cache_creation"]
    s = cache.stats()
    assert (s["hits"], s["misses"], s["evictions"]) == (1, 1, 0) and s["bytes"] > 0

    listing = json.loads(run_turn(graph, "/list", "t1").answer)
    assert listing == [{"id": doc_id, "name": "boxes.txt", "characters": len(DOC)}]
    humans = [m.content for m in state_of(graph, "t1")["messages"] if isinstance(m, HumanMessage)]
    assert humans == [f"/open {doc_file}", "How many coins are in the blue box?", "Which line mentions 49 coins?",
                      "/list"]
    other = run_turn(graph, "Which box?", "t2")  # another thread has no document open
    assert other.ok and "No document is open" in other.answer


def test_router_tool_error_ends_the_turn_without_an_answer(engine, tmp_path, access):
    graph = build_agent(homer_llm(engine, tiny_cache()), mode="router", access=access)
    missing = run_turn(graph, f"/open {tmp_path / 'nope.txt'}", "t")
    assert not missing.ok and missing.answer is None and "no such file" in missing.error
    assert isinstance(missing.messages[-1], ToolMessage) and missing.messages[-1].status == "error"
    refused = run_turn(graph, "/open /etc/passwd", "t")
    assert not refused.ok and refused.answer is None and "outside the allowed folders" in refused.error


# ---------------------------------------------------------------------------------------- stream modes
def _stream(graph, text: str, thread: str) -> dict[str, list]:
    out: dict[str, list] = {"updates": [], "messages": [], "custom": []}
    config = {"configurable": {"thread_id": thread}}
    for mode, data in graph.stream({"messages": [HumanMessage(text)]}, config,
                                   stream_mode=["updates", "messages", "custom"]):
        out[mode].append(data)
    return out


@pytest.mark.parametrize("mode", ["router", "model"])
def test_progress_shows_on_every_stream_mode(engine, doc_file, access, mode):
    doc_id = document_id(DOC)
    script = ScriptedChatModel(steps=[
        call("open_document", {"path": str(doc_file)}, 1), AIMessage(content="Opened."),
        call("ask_document", {"question": "Which box is red?"}, 2),
    ])
    graph = build_agent(homer_llm(engine, tiny_cache()), mode=mode, agent_llm=script, access=access)
    run_turn(graph, f"/open {doc_file}" if mode == "router" else "Open the boxes", "s")
    got = _stream(graph, "Which box is red?", "s")

    # custom: compression progress and the answer event from inside the tool
    custom = [e["event"] for e in got["custom"] if "event" in e]
    assert "progress" in custom and custom[-1] == "answer"
    # updates: the agent's tool call, then the tools node's result with its timing and cache use
    agent_node = "router" if mode == "router" else "model"
    steps = [u for u in got["updates"] if next(iter(u)) in (agent_node, "tools")]  # (also: middleware steps)
    assert [next(iter(u)) for u in steps][:2] == [agent_node, "tools"]
    chosen = steps[0][agent_node]["messages"][-1]
    assert chosen.tool_calls[0]["name"] == "ask_document"
    result = steps[1]["tools"]["messages"][-1]
    assert result.status == "success" and result.artifact["document_id"] == doc_id
    assert result.artifact["seconds"] > 0 and result.artifact["usage_metadata"]["input_token_details"]
    # messages: the answering model's tokens as they come, from inside the tools node
    chunks = [(m, meta) for m, meta in got["messages"] if isinstance(m, AIMessageChunk)]
    assert chunks and all(meta["langgraph_node"] in ("tools", agent_node) for _, meta in chunks)
    assert any(meta["langgraph_node"] == "tools" for _, meta in chunks)
    assert any(isinstance(m, ToolMessage) and m.name == "ask_document" for m, _ in got["messages"])
