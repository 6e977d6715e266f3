"""The model-driven agent on a real tool-calling model (Qwen2.5-Coder-1.5B-Instruct, CPU, minutes).

The model itself chooses open_document and ask_document; HOMER compresses the document over two
leaves (chunk_len 1024 on an 1800-token passkey document) and the second question is a cache hit.
"""

from __future__ import annotations

import pytest

pytest.importorskip("langgraph")
langchain_homer = pytest.importorskip("langchain_homer")

from homer_agent import DocumentAccess, build_agent, resolve_mode, run_turn  # noqa: E402
from homer_agent.passkey import build_document, door_code_needle, passkey_needle  # noqa: E402
from real_models import QWEN_SKIP, qwen_path  # noqa: E402

from homer_llm.doc_cache import DocumentCache  # noqa: E402


@pytest.mark.slow
def test_qwen_chooses_the_tools_and_reads_the_document(tmp_path, two_threads):
    path = qwen_path("1.5b")
    if path is None:
        pytest.skip(QWEN_SKIP)
    cache = DocumentCache()
    llm = langchain_homer.HomerLLM(model=str(path), dtype="float32", chunk_len=1024, max_tokens=48,
                                   document_cache=cache)
    assert resolve_mode("auto", llm) == "model"  # the hermes template renders tools
    doc = tmp_path / "notes.txt"
    doc.write_text(build_document(llm.get_num_tokens, 1800, [(0.3, passkey_needle(71432)),
                                                             (0.7, door_code_needle(5093))]))
    graph = build_agent(llm, access=DocumentAccess((tmp_path,)))
    opened = run_turn(graph, f"Open the document {doc}", "q")
    assert opened.ok and "open_document" in opened.tool_calls, opened.error
    first = run_turn(graph, "What is the pass key?", "q")
    assert first.ok and first.tool_calls == ("ask_document",), first.error
    assert "71432" in first.answer
    second = run_turn(graph, "What is the door code?", "q")
    assert second.ok and second.tool_calls == ("ask_document",), second.error
    assert second.usage["input_token_details"]["cache_read"] > 0  # no recompression
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1
