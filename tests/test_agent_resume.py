"""A conversation kept in SQLite and resumed in a NEW process still knows its document.

Each phase runs in its own Python process (the same seeded tiny llama, a rule-following scripted
tool-calling model, ``sqlite_checkpointer`` and a ``DocumentCache`` with a disk folder). The
resumed process has an empty registry and an empty memory cache: the document is re-opened from
the path in the checkpointed state (hash-checked) and its compressed state comes from the disk tier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("langgraph.checkpoint.sqlite", reason="needs langgraph-checkpoint-sqlite (the agents extra)")
pytest.importorskip("langchain_homer")

DOC = "".join(f"Line {i}: the {['red', 'blue', 'green'][i % 3]} box holds {i * 7} coins.\n" for i in range(10))
TESTS = Path(__file__).resolve().parent

PHASE = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import torch
    torch.set_num_threads(1)  # a process of its own: nothing to restore, no fixture reaches it
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from tiny import tiny_engine

    from homer_agent import DocumentAccess, build_agent, default_cache_dir, run_turn, sqlite_checkpointer
    from homer_llm.doc_cache import DocumentCache
    from langchain_homer import HomerLLM

    class RuleModel(BaseChatModel):
        """'open PATH' -> open_document; other questions -> ask_document; a tool result -> a reply."""

        @property
        def _llm_type(self):
            return "rules"

        def bind_tools(self, tools, **kwargs):
            return self

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            last = messages[-1]
            if isinstance(last, ToolMessage):
                reply = AIMessage(content=("failed: " if last.status == "error" else "") + str(last.content))
            elif last.content.startswith("open "):
                reply = AIMessage(content="", tool_calls=[{"name": "open_document", "type": "tool_call",
                                                           "id": "o1", "args": {"path": last.content[5:]}}])
            else:
                reply = AIMessage(content="", tool_calls=[{"name": "ask_document", "type": "tool_call",
                                                           "id": "a1", "args": {"question": last.content}}])
            return ChatResult(generations=[ChatGeneration(message=reply)])

    args = json.loads(sys.argv[1])
    engine = tiny_engine(layers=4, name="tiny-resume")
    cache = DocumentCache(mode="agnostic", generic_suffix="\\n\\nKeep the facts.",
                          disk_dir=default_cache_dir(args["db"]))
    llm = HomerLLM(engine=engine, max_tokens=3, document_cache=cache)
    events = []
    with sqlite_checkpointer(args["db"]) as saver:
        graph = build_agent(llm, mode="model", agent_llm=RuleModel(), checkpointer=saver,
                            access=DocumentAccess((args["root"],)))
        turns = [run_turn(graph, text, "resume", events.append) for text in args["messages"]]
        state = graph.get_state({"configurable": {"thread_id": "resume"}}).values
    print(json.dumps({
        "turns": [{"ok": t.ok, "answer": t.answer, "error": t.error, "tools": list(t.tool_calls),
                   "usage": t.usage.get("input_token_details", {})} for t in turns],
        "tool_answers": [str(m.content) for t in turns for m in t.messages
                         if isinstance(m, ToolMessage) and m.name == "ask_document"],
        "stats": cache.stats(), "progress": sum(e.get("event") == "progress" for e in events),
        "documents": state.get("documents", {}), "humans": sum(isinstance(m, HumanMessage) for m in state["messages"]),
    }))
''')


def phase(tmp_path: Path, messages: list[str]) -> dict:
    script = tmp_path / "phase.py"
    script.write_text(PHASE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = json.dumps({"db": str(tmp_path / "agent.sqlite"), "root": str(tmp_path / "docs"), "messages": messages})
    proc = subprocess.run([sys.executable, str(script), args, str(TESTS)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_thread_resumed_in_a_new_process_answers_from_its_document(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    path = docs / "boxes.txt"
    path.write_text(DOC)

    first = phase(tmp_path, [f"open {path}", "Which box is red?"])
    opened, asked = first["turns"]
    assert opened["ok"] and opened["tools"] == ["open_document"]
    assert asked["ok"] and asked["tools"] == ["ask_document"] and asked["usage"]["cache_creation"] > 0
    assert first["progress"] > 0 and first["stats"]["disk_writes"] == 1
    (doc_id, ref), = first["documents"].items()
    assert ref["path"] == str(path.resolve()) and "text" not in ref

    # a new process: empty registry, empty memory cache, the same SQLite file and disk folder
    second = phase(tmp_path, ["Which box is red?"])
    (again,) = second["turns"]
    assert again["ok"], again["error"]
    assert again["tools"] == ["ask_document"] and not again["answer"].startswith("failed")
    assert second["tool_answers"] == first["tool_answers"], "the same compressed state answers the same"
    assert again["usage"]["cache_read"] > 0 and second["progress"] == 0, "no recompression"
    assert second["stats"]["disk_hits"] == 1 and second["stats"]["disk_writes"] == 0
    assert second["humans"] == 3  # the whole conversation came back from SQLite

    # the file changed on disk: reported as a tool error, never answered from the new text
    path.write_text(DOC.replace("red", "pink"))
    third = phase(tmp_path, ["Which box is red?"])
    (changed,) = third["turns"]
    assert not changed["ok"] and "changed since it was opened" in changed["error"]
    assert changed["answer"].startswith("failed: ") and third["stats"]["misses"] == 0
