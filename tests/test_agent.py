"""The LangGraph document agent: tools, state, checkpointer, streamed progress, cache reuse, CLI.

The answering model is the real LangChain ``HomerLLM`` over a tiny random llama (so documents
really are compressed and cached); the tool-choosing model of "llm" mode is scripted.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

pytest.importorskip("langgraph")
langchain_homer = pytest.importorskip("langchain_homer")

from agents import (  # noqa: E402
    DocumentRegistry,
    build_agent,
    document_agent,  # noqa: E402
    document_id,
    run_turn,
)
from homer_llm import HomerConfig, HomerModel  # noqa: E402
from homer_llm.doc_cache import DocumentCache  # noqa: E402

DOC = "".join(f"Line {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7} coins.\n" for i in range(10))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine():
    from tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    return HomerModel(tiny_model("llama", vocab=len(tok), layers=4), tok, name="tiny-agent",
                      homer=HomerConfig(pruning="uncalibrated"))


@pytest.fixture
def doc_file(tmp_path):
    path = tmp_path / "boxes.txt"
    path.write_text(DOC)
    return path


def homer_llm(engine, cache):
    return langchain_homer.HomerLLM(engine=engine, max_tokens=3, document_cache=cache)


def tiny_cache():
    return DocumentCache(mode="agnostic", generic_suffix="\n\nKeep the facts.")


class ScriptedChatModel(BaseChatModel):
    """Plays scripted steps; each step is an AIMessage or a function of the messages it receives."""

    steps: list[Any]
    seen: list[list[BaseMessage]] = []
    bound: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools, **kwargs):
        self.bound = [t.name for t in tools]
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


# ---------------------------------------------------------------------------------------- direct mode
def test_direct_agent_reuses_the_document_and_streams_progress(engine, doc_file):
    cache = tiny_cache()
    graph = build_agent(homer_llm(engine, cache))
    events: list[dict] = []
    opened = run_turn(graph, f"/open {doc_file}", "t1", events.append)
    doc_id = document_id(DOC)
    assert opened.content.startswith(f"Opened {doc_id}")

    first = run_turn(graph, "How many coins are in the blue box?", "t1", events.append)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] and progress[-1]["document_id"] == doc_id
    details = first.usage_metadata["input_token_details"]
    assert details["cache_read"] == 0 and details["cache_creation"] > 0
    assert first.response_metadata["homer"]["document_tokens"] == details["cache_creation"]

    events.clear()
    second = run_turn(graph, "Which line mentions 49 coins?", "t1", events.append)
    assert not [e for e in events if e["event"] == "progress"], "a cache hit must not recompress"
    assert second.usage_metadata["input_token_details"]["cache_read"] == details["cache_creation"]
    answers = [e for e in events if e["event"] == "answer"]
    assert answers and answers[0]["cache_read"] > 0
    s = cache.stats()
    assert (s["hits"], s["misses"], s["evictions"]) == (1, 1, 0) and s["bytes"] > 0

    # the checkpointer kept the whole conversation; the state holds ids, never text or tensors
    state = graph.get_state({"configurable": {"thread_id": "t1"}}).values
    assert state["documents"] == [doc_id] and state["active_document"] == doc_id
    humans = [m.content for m in state["messages"] if isinstance(m, HumanMessage)]
    assert humans == [f"/open {doc_file}", "How many coins are in the blue box?", "Which line mentions 49 coins?"]
    assert DOC not in json.dumps([str(m.content) for m in state["messages"]])
    # another thread starts empty: no document open
    other = run_turn(graph, "Which box?", "t2")
    assert "No document is open" in other.content


def test_direct_agent_list_and_errors(engine, doc_file, tmp_path):
    graph = build_agent(homer_llm(engine, tiny_cache()))
    missing = run_turn(graph, f"/open {tmp_path / 'nope.txt'}", "t")
    assert "no such file" in missing.content
    run_turn(graph, f"/open {doc_file}", "t")
    listing = json.loads(run_turn(graph, "/list", "t").content)
    assert listing == [{"id": document_id(DOC), "name": "boxes.txt", "characters": len(DOC)}]


def test_binary_file_is_refused(engine, tmp_path):
    path = tmp_path / "bin.dat"
    path.write_bytes(b"\x00\x01\x02")
    graph = build_agent(homer_llm(engine, tiny_cache()))
    assert "error" in run_turn(graph, f"/open {path}", "t").content


# ---------------------------------------------------------------------------------------- llm mode
def test_llm_agent_driven_by_scripted_tool_calls(engine, doc_file):
    doc_id = document_id(DOC)
    script = ScriptedChatModel(steps=[
        call("open_document", {"path": str(doc_file)}, 1),
        lambda msgs: AIMessage(content=f"Opened: {last_tool(msgs).content}"),
        call("ask_document", {"document_id": doc_id, "question": "Which box is red?"}, 2),
        lambda msgs: AIMessage(content=f"The document says: {last_tool(msgs).content}"),
        call("list_documents", {}, 3),
        lambda msgs: AIMessage(content=last_tool(msgs).content),
        call("ask_document", {"document_id": "doc-000000000000", "question": "x"}, 4),
        lambda msgs: AIMessage(content=f"failed: {last_tool(msgs).content}"),
    ])
    cache = tiny_cache()
    graph = build_agent(homer_llm(engine, cache), mode="llm", agent_llm=script)
    assert script.bound == ["open_document", "ask_document", "list_documents"]

    assert run_turn(graph, "Please open the boxes file.", "c").content.startswith(f"Opened: {doc_id}")
    answer = run_turn(graph, "Which box is red?", "c")
    assert answer.content.startswith("The document says:")
    # the system prompt of the second turn lists the open document
    system = [m for m in script.seen[2] if isinstance(m, SystemMessage)][0]
    assert doc_id in system.content and "Active: " + doc_id in system.content
    # history from the first turn reached the model (checkpointer)
    assert any(isinstance(m, HumanMessage) and m.content == "Please open the boxes file." for m in script.seen[2])
    assert json.loads(run_turn(graph, "What is open?", "c").content)[0]["id"] == doc_id
    failed = run_turn(graph, "Ask about a missing one.", "c")
    assert failed.content.startswith("failed:") and "unknown document id" in failed.content
    assert cache.stats()["misses"] == 1 and not script.steps


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        build_agent(ScriptedChatModel(steps=[]), mode="auto")


# ---------------------------------------------------------------------------------------- CLI
def test_cli_prints_answers_and_cache_stats_last(engine, doc_file, monkeypatch, capsys):
    made: dict[str, Any] = {}
    real = langchain_homer.HomerLLM

    def fake_homer_llm(**kwargs):
        made.update(kwargs)
        for name in ("model", "device", "dtype"):
            assert kwargs.pop(name) is None
        return real(engine=engine, **kwargs)

    monkeypatch.setattr(langchain_homer, "HomerLLM", fake_homer_llm)
    monkeypatch.setattr("homer_llm.reuse.GENERIC_SUFFIX", "\n\nKeep the facts.")
    code = document_agent.main(["--document", str(doc_file), "--question", "Which box is red?",
                                "--question", "How many coins in line 3?", "--max-tokens", "3", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    stats = json.loads(out[-1])
    assert {"hits", "misses", "evictions", "bytes"} <= set(stats)
    assert (stats["hits"], stats["misses"]) == (1, 1) and len(stats["answer_seconds"]) == 2
    assert any(line.startswith("A1: ") for line in out) and any(line.startswith("A2: ") for line in out)
    assert made["max_tokens"] == 3 and isinstance(made["document_cache"], DocumentCache)


def test_registry_ids_are_content_ids(tmp_path):
    reg = DocumentRegistry()
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("same text")
    b.write_text("same text")
    assert reg.open(a).id == reg.open(b).id == document_id("same text") and len(reg) == 1
    with pytest.raises(KeyError, match="unknown document id"):
        reg.get("doc-1")


def test_cli_exits_2_on_a_missing_document_and_still_prints_stats_last(tmp_path, capsys):
    code = document_agent.main(["--document", str(tmp_path / "missing.txt"), "--question", "Q?", "--quiet"])
    assert code == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert "no such file" in out[0] and json.loads(out[-1])["misses"] == 0
