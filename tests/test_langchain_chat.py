"""HomerLLM on tiny engines: LangChain's standard unit suite, generation, documents, async, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_homer import HomerLLM, find_document_span, join_documents
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import ValidationError
from test_langchain_support import ScriptedEngine, ScriptedStream, shared_tiny_engine

from homer_llm import GenerationConfig, HomerConfig, HomerModel

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- standard suite
class TestHomerLLMStandardUnit(ChatModelUnitTests):
    """langchain-tests' ChatModelUnitTests over a tiny injected engine."""

    @property
    def chat_model_class(self) -> type[HomerLLM]:
        return HomerLLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": shared_tiny_engine()}


# ----------------------------------------------------------------------------- construction
def test_construction_is_lazy_and_default_model_is_shared(monkeypatch):
    calls = []

    def fake_shared(model=None, **kwargs):
        calls.append((model, kwargs))
        return ScriptedEngine(["hi there"])

    monkeypatch.setattr(HomerModel, "shared", classmethod(lambda cls, model=None, **kw: fake_shared(model, **kw)))
    llm = HomerLLM()
    assert calls == []  # nothing loads at construction
    assert llm.invoke("hello").content == "hi there"
    # the embedded default with the adapters' default read, the hybrid: the key every adapter shares
    assert len(calls) == 1 and calls[0][0] is None
    hybrid = HomerConfig(focus_leaves=3, focus_keep_document=True)
    assert HomerModel.shared_key(None, **calls[0][1]) == HomerModel.shared_key(None, homer=hybrid)
    HomerLLM(device="cpu", dtype="bfloat16", chunk_len=64, prune_unit="word").invoke("x")
    model, kwargs = calls[-1]
    assert model is None and kwargs["device"] == "cpu" and kwargs["dtype"] == "bfloat16"
    assert kwargs["homer"].chunk_len == 64 and kwargs["homer"].prune_unit == "word"
    assert kwargs["homer"].reread_suffix is True
    HomerLLM(reread_suffix=False).invoke("x")
    assert calls[-1][1]["homer"].reread_suffix is False
    HomerLLM(rope_scaling="yarn", rope_factor=4).invoke("x")  # HOMER + YaRN: its own engine key
    homer = calls[-1][1]["homer"]
    assert homer.rope_scaling == "yarn" and homer.rope_factor == 4
    assert HomerModel.shared_key(None, **calls[-1][1]) != HomerModel.shared_key(None)
    HomerLLM(focus_leaves=2).invoke("x")
    assert calls[-1][1]["homer"].focus_leaves == 2 and calls[-1][1]["homer"].focus_margin == 256
    assert calls[-1][1]["homer"].focus_locator == "leaf" and calls[-1][1]["homer"].merge_attention == "auto"
    HomerLLM(focus_leaves=2, focus_margin=0).invoke("x")
    assert calls[-1][1]["homer"].focus_margin == 0
    HomerLLM(focus_leaves=2, focus_locator="tree", merge_attention="own-leaf").invoke("x")
    assert calls[-1][1]["homer"].focus_locator == "tree" and calls[-1][1]["homer"].merge_attention == "own-leaf"
    HomerLLM().invoke("x", model="/models/other")  # per-call override
    assert calls[-1][0] == "/models/other"


def test_field_validation():
    with pytest.raises(ValidationError):
        HomerLLM(temprature=0.5)  # typo: unknown fields are refused
    with pytest.raises(ValidationError):
        HomerLLM(temperature=-1)
    with pytest.raises(ValidationError):
        HomerLLM(dtype="int4")
    with pytest.raises(ValidationError):
        HomerLLM(chunk_len=4)
    with pytest.raises(ValidationError):
        HomerLLM(stop=[""])
    with pytest.raises(ValidationError):
        HomerLLM(prune_unit="sentence")
    with pytest.raises(ValidationError):
        HomerLLM(rope_scaling="ntk")
    with pytest.raises(ValidationError, match="rope_factor must be > 1"):
        HomerLLM(rope_scaling="yarn", rope_factor=1.0)
    with pytest.raises(ValidationError):
        HomerLLM(focus_leaves=-1)
    with pytest.raises(ValidationError):
        HomerLLM(focus_margin=-1)
    with pytest.raises(ValidationError):
        HomerLLM(focus_locator="root")
    with pytest.raises(ValidationError):
        HomerLLM(merge_attention="full")
    with pytest.raises(TypeError, match="engine must be a homer_llm.HomerModel"):
        HomerLLM(engine=object())
    with pytest.raises(TypeError, match="get_or_compress"):
        HomerLLM(document_cache=object())


def test_identity_and_tracing_params():
    llm = HomerLLM(engine=shared_tiny_engine(), max_tokens=7, stop=["x"])
    assert llm._llm_type == "homer"
    assert llm.model_name == "tiny-llama"
    assert llm._identifying_params["max_tokens"] == 7
    params = llm._get_ls_params()
    assert params["ls_provider"] == "homer" and params["ls_model_name"] == "tiny-llama" and params["ls_stop"] == ["x"]
    assert HomerLLM()._get_ls_params()["ls_model_name"] == "SmolLM2-135M-Instruct"


def test_token_counting_uses_the_model_tokenizer():
    llm = HomerLLM(engine=shared_tiny_engine())
    assert llm.get_token_ids("hey") == [shared_tiny_engine().tokenizer.convert_tokens_to_ids(c) for c in "hey"]
    assert llm.get_num_tokens("hello") == 5  # the tiny tokenizer is one token per character
    # <|im_start|> "user\nhi" <|im_end|> "\n" <|im_start|> "assistant\n": 1 + 7 + 1 + 1 + 1 + 10
    assert llm.get_num_tokens_from_messages([HumanMessage("hi")]) == 21


# ----------------------------------------------------------------------------- generation
def test_invoke_matches_the_engine_and_stream_matches_invoke():
    engine = shared_tiny_engine()
    llm = HomerLLM(engine=engine, max_tokens=6)
    msg = llm.invoke([SystemMessage("sys"), HumanMessage("hello")])
    parts = engine.prepare_chat([{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}])
    direct = engine.generate(parts, GenerationConfig(max_new_tokens=6))
    assert msg.content == direct.text
    assert msg.usage_metadata == {"input_tokens": len(parts), "output_tokens": len(direct.token_ids),
                                  "total_tokens": len(parts) + len(direct.token_ids),
                                  "input_token_details": {"cache_read": 0, "cache_creation": 0}}
    assert msg.response_metadata["model_name"] == "tiny-llama"
    assert msg.response_metadata["finish_reason"] == direct.finish_reason
    chunks = list(llm.stream([SystemMessage("sys"), HumanMessage("hello")]))
    assert "".join(c.content for c in chunks) == direct.text
    last = chunks[-1]
    assert last.chunk_position == "last" and last.usage_metadata["output_tokens"] == len(direct.token_ids)
    assert last.response_metadata["model_name"] == "tiny-llama"
    assert sum(1 for c in chunks if c.usage_metadata) == 1


def test_stop_max_tokens_temperature_reach_the_engine():
    engine = ScriptedEngine(["one two three four"])
    llm = HomerLLM(engine=engine, stop=["four"], max_tokens=50, temperature=0.7, top_p=0.9, top_k=5, seed=3)
    assert llm.invoke("count", stop=["three"]).content == "one two "
    config = engine.configs[-1]
    assert config.stop == ("four", "three") and config.max_new_tokens == 50
    assert (config.temperature, config.top_p, config.top_k, config.seed) == (0.7, 0.9, 5, 3)
    llm.invoke("count", max_tokens=4, temperature=0.0)
    assert engine.configs[-1].max_new_tokens == 4 and engine.configs[-1].temperature == 0.0
    bound = llm.bind(max_tokens=2)
    assert bound.invoke("count").response_metadata["finish_reason"] == "length"


def test_max_tokens_none_is_bounded_by_the_window():
    engine = ScriptedEngine(["x"], window=256)
    HomerLLM(engine=engine, max_tokens=None).invoke("hi")
    assert 0 < engine.configs[-1].max_new_tokens <= 256 - len(engine.prompts[-1])


def test_batch_is_serialized_and_deterministic():
    llm = HomerLLM(engine=shared_tiny_engine(), max_tokens=4)
    inputs = ["alpha", "beta", "gamma"]
    batched = llm.batch(inputs, config={"max_concurrency": 3})
    assert [m.content for m in batched] == [llm.invoke(i).content for i in inputs]


# ----------------------------------------------------------------------------- documents
def test_find_document_span_rule():
    count = len  # one token per character
    text = "Read this.\n\n" + "A" * 50 + "\n\n" + "B" * 50 + "\n\nQuestion: x?"
    span = find_document_span(["sys", text], count, edge_tokens=12)
    assert span.message_index == 1
    assert text[span.start:span.end] == "A" * 50 + "\n\n" + "B" * 50
    # a long last paragraph is never pulled out of the document
    span = find_document_span([text], count, edge_tokens=5)  # no edge paragraph fits 5 tokens
    assert text[span.start:span.end] == text
    span = find_document_span([text], count, edge_tokens=60)  # "A"*50 fits, but one paragraph must remain
    assert text[span.start:span.end] == "B" * 50
    # one paragraph: lines are used instead
    lines = "Summarize:\n" + "C" * 60 + "\nBe brief."
    span = find_document_span([lines], count, edge_tokens=10)
    assert lines[span.start:span.end] == "C" * 60
    # nothing at the edges fits: the whole content is the document
    assert find_document_span(["D" * 30], count, edge_tokens=10) is not None
    assert find_document_span(["", "  "], count, edge_tokens=10) is None


def test_join_documents():
    assert join_documents(["a", Document(page_content="b"), "  "]) == "a\n\nb"
    assert join_documents("solo") == "solo"
    with pytest.raises(TypeError):
        join_documents([3])
    with pytest.raises(ValueError):
        join_documents(["", " "])


DOC = "\n\n".join(f"Fact {i}: the value of item {i} is {i * 7}." for i in range(12))


def test_long_prompt_in_a_chain_compresses_only_the_document():
    engine = ScriptedEngine(["42"], window=256)
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer briefly."),
        ("human", "Use the text.\n\n{document}\n\nWhat is item 3?"),
    ])
    chain = prompt | HomerLLM(engine=engine, edge_tokens=20) | StrOutputParser()
    assert chain.invoke({"document": DOC}) == "42"
    parts = engine.prompts[-1]
    tok = engine.tokenizer
    assert tok.decode(list(parts.context)) == DOC
    assert tok.decode(list(parts.prefix)).endswith("Use the text.\n\n")
    assert tok.decode(list(parts.suffix)).startswith("\n\nWhat is item 3?")


def test_final_ai_message_is_continued_as_the_answer_start():
    """A trailing AIMessage is a prefill: the prompt (the tree's suffix) ends with its text."""
    engine = ScriptedEngine([" 21."], window=256)
    messages = [HumanMessage(f"Use the text.\n\n{DOC}\n\nWhat is item 3?"), AIMessage("The value of item 3 is")]
    out = HomerLLM(engine=engine, edge_tokens=20).invoke(messages)
    assert out.content == " 21."  # the continuation only, as prefill-capable chat APIs return it
    parts = engine.prompts[-1]
    assert engine.tokenizer.decode(list(parts.context)) == DOC
    assert engine.tokenizer.decode(list(parts.suffix)).endswith("<|im_start|>assistant\nThe value of item 3 is")


def test_short_prompt_is_not_split():
    engine = ScriptedEngine(["ok"], window=256)
    HomerLLM(engine=engine).invoke("short question")
    assert engine.prompts[-1].context == ()


@pytest.mark.parametrize("how", ["call", "bind", "field"])
def test_explicit_documents(how):
    engine = ScriptedEngine(["ok"], window=256)
    docs = ["First doc text.", Document(page_content="Second doc text.")]
    if how == "call":
        HomerLLM(engine=engine).invoke("Which docs?", documents=docs)
    elif how == "bind":
        HomerLLM(engine=engine).bind(documents=docs).invoke("Which docs?")
    else:
        HomerLLM(engine=engine, documents=docs).invoke("Which docs?")
    parts = engine.prompts[-1]
    assert engine.tokenizer.decode(list(parts.context)) == "First doc text.\n\nSecond doc text."
    assert engine.tokenizer.decode(list(parts.suffix)).startswith("\n\nWhich docs?<|im_end|>")


class _Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_custom_event(self, name, data, *, run_id, tags=None, metadata=None, **kwargs) -> None:
        self.events.append((name, data))


def test_real_compression_of_a_long_prompt_reports_progress():
    engine = ScriptedEngine(["done"], window=256, real_compress=True)
    handler = _Events()
    msg = HomerLLM(engine=engine, edge_tokens=20).invoke(
        f"Use the text.\n\n{DOC}\n\nWhat?", config={"callbacks": [handler]})
    meta = msg.response_metadata["homer"]
    assert meta["document_tokens"] == len(DOC) and meta["tree_height"] >= 2
    assert meta["cache_tokens"] <= engine.chunk_len
    progress = [d for n, d in handler.events if n == "homer_progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] > 0


async def test_progress_in_astream_events():
    engine = ScriptedEngine(["done"], window=256, real_compress=True)
    llm = HomerLLM(engine=engine, edge_tokens=20)
    names = [e["name"] async for e in llm.astream_events(f"Use the text.\n\n{DOC}\n\nWhat?", version="v2")
             if e["event"] == "on_custom_event"]
    assert names and set(names) == {"homer_progress"}


class _RunEvents(BaseCallbackHandler):
    """Progress events with the run they belong to, tokens, and the chat model runs started."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []
        self.tokens: list[str] = []
        self.runs: list[Any] = []

    def on_custom_event(self, name, data, *, run_id, **kwargs) -> None:
        self.events.append((name, data, run_id))

    def on_llm_new_token(self, token, **kwargs) -> None:
        self.tokens.append(token)

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs) -> None:
        self.runs.append(run_id)


@pytest.mark.parametrize("streaming", [False, True])
def test_invoke_reports_progress_to_the_chat_model_run(streaming):
    """``streaming=True`` makes invoke stream internally (no run manager reaches ``_stream``): progress still
    reaches the callbacks, on the chat model's own run, next to the streamed tokens."""
    handler = _RunEvents()
    llm = HomerLLM(engine=ScriptedEngine(["hello there friend"]), streaming=streaming)
    assert llm.invoke("hi", config={"callbacks": [handler]}).content == "hello there friend"
    assert [(n, d) for n, d, _ in handler.events] == [("homer_progress", {"done": 1, "total": 1})]
    assert [r for _, _, r in handler.events] == handler.runs and len(handler.runs) == 1
    assert (len(handler.tokens) > 2) == streaming


async def test_ainvoke_with_streaming_reports_progress():
    handler = _RunEvents()
    llm = HomerLLM(engine=ScriptedEngine(["hello there friend"]), streaming=True)
    await llm.ainvoke("hi", config={"callbacks": [handler]})
    await asyncio.sleep(0)  # events scheduled from the worker thread
    assert [(n, d) for n, d, _ in handler.events] == [("homer_progress", {"done": 1, "total": 1})]
    assert len(handler.tokens) > 2


def _graph(llm):
    from langgraph.graph import START, MessagesState, StateGraph

    def node(state: MessagesState) -> dict:
        return {"messages": [llm.invoke(state["messages"])]}

    return StateGraph(MessagesState).add_node("model", node).add_edge(START, "model").compile()


def test_langgraph_stream_modes_carry_tokens_and_progress():
    graph = _graph(HomerLLM(engine=ScriptedEngine(["hello there friend"]), streaming=True))
    seen: dict[str, list] = {"messages": [], "custom": []}
    for mode, item in graph.stream({"messages": [HumanMessage("hi")]}, stream_mode=["messages", "custom"]):
        seen[mode].append(item)
    assert "".join(chunk.content for chunk, _ in seen["messages"]) == "hello there friend"
    assert len(seen["messages"]) > 2
    assert seen["custom"] == [{"homer_progress": {"done": 1, "total": 1}}]


async def test_langgraph_astream_custom_and_events_carry_progress():
    graph = _graph(HomerLLM(engine=ScriptedEngine(["hello there friend"])))
    custom = [item async for item in graph.astream({"messages": [HumanMessage("hi")]}, stream_mode="custom")]
    assert custom == [{"homer_progress": {"done": 1, "total": 1}}]
    events = [e async for e in graph.astream_events({"messages": [HumanMessage("hi")]}, version="v2")
              if e["event"] == "on_custom_event"]
    assert [e["name"] for e in events] == ["homer_progress"]


class _FakeCache:
    """Duck-typed document cache: a miss, then hits."""

    def __init__(self) -> None:
        self.stored: dict = {}

    def get_or_compress(self, engine, parts, progress):
        key = parts.context
        hit = key in self.stored
        if not hit:
            self.stored[key] = engine.compress(parts, progress=progress)
        return self.stored[key], hit


def test_document_cache_hook_reports_cache_tokens():
    engine = ScriptedEngine(["a", "b"], window=256)
    llm = HomerLLM(engine=engine, document_cache=_FakeCache())
    first = llm.invoke("Q?", documents=[DOC])
    second = llm.invoke("Q?", documents=[DOC])
    n = len(engine.prompts[0].context)
    assert first.usage_metadata["input_token_details"] == {"cache_read": 0, "cache_creation": n}
    assert second.usage_metadata["input_token_details"] == {"cache_read": n, "cache_creation": 0}
    plain = llm.invoke("no document here")  # the cache is only used for documents
    assert plain.usage_metadata["input_token_details"] == {"cache_read": 0, "cache_creation": 0}
    streamed = list(llm.stream("Q?", documents=[DOC]))
    assert streamed[-1].usage_metadata["input_token_details"]["cache_read"] == n


def test_real_document_cache_if_present():
    doc_cache = pytest.importorskip("homer_llm.doc_cache", reason="homer_llm.doc_cache is not in this checkout")
    engine = ScriptedEngine(["x"], window=256, real_compress=True)
    llm = HomerLLM(engine=engine, document_cache=doc_cache.DocumentCache(mode="exact"))
    first = llm.invoke("Q?", documents=[DOC])
    second = llm.invoke("Q?", documents=[DOC])
    assert first.usage_metadata["input_token_details"]["cache_creation"] > 0
    assert second.usage_metadata["input_token_details"]["cache_read"] > 0


# ----------------------------------------------------------------------------- async
class _SlowEngine(ScriptedEngine):
    """Every delta takes 30 ms of (thread-blocking) work, like a real decode step."""

    def stream(self, source, config=None, *, progress=None):
        inner = super().stream(source, config)

        class Slow(ScriptedStream):
            def _run(self_inner):
                for delta in ScriptedStream._run(self_inner):
                    time.sleep(0.03)
                    yield delta

        slow = Slow(inner._text, inner._config, inner._tok)
        self.last_stream = slow
        return slow


async def test_ainvoke_does_not_block_the_event_loop():
    engine = _SlowEngine(["a fairly long scripted answer"])
    llm = HomerLLM(engine=engine)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    msg = await llm.ainvoke("hi")
    elapsed = time.perf_counter() - start
    task.cancel()
    assert msg.content == "a fairly long scripted answer"
    assert elapsed > 0.2 and ticks >= 10  # the loop kept running while the engine worked


async def test_astream_and_abatch():
    llm = HomerLLM(engine=ScriptedEngine(["streamed words here"]))
    chunks = [c async for c in llm.astream("hi")]
    assert "".join(c.content for c in chunks) == "streamed words here"
    assert len(chunks) > 2 and chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata
    results = await llm.abatch(["a", "b", "c"])
    assert all(isinstance(r, AIMessage) and r.content for r in results)


async def test_astream_closed_early_releases_the_engine():
    engine = _SlowEngine(["x" * 60])
    llm = HomerLLM(engine=engine)
    stream = llm.astream("hi")
    first = await stream.__anext__()
    assert isinstance(first, AIMessageChunk)
    await stream.aclose()
    # the worker notices within a step or two and releases the model lock
    for _ in range(100):
        if engine.lock.acquire(blocking=False):
            engine.lock.release()
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the engine lock was not released after the stream was closed")
    assert (await llm.ainvoke("again")).content


async def test_async_errors_surface_without_hanging():
    llm = HomerLLM(engine=ScriptedEngine(["x"]))
    with pytest.raises(ValueError, match="at least one message"):
        await asyncio.wait_for(llm.ainvoke([]), timeout=30)
    with pytest.raises(ValueError, match="at least one message"):
        await asyncio.wait_for(_drain(llm.astream([])), timeout=30)


async def _drain(aiter):
    return [c async for c in aiter]


# ----------------------------------------------------------------------------- bad input
def test_empty_messages():
    llm = HomerLLM(engine=ScriptedEngine(["x"]))
    with pytest.raises(ValueError, match="at least one message"):
        llm.invoke([])
    with pytest.raises(ValueError, match="at least one message"):
        list(llm.stream([]))


def test_prompt_too_long_without_a_document():
    engine = ScriptedEngine(["x"], window=256)
    history = []
    for i in range(12):  # many short turns: nothing to compress, more than one chunk
        history += [HumanMessage(f"turn {i}"), AIMessage(f"ok {i}")]
    history.append(HumanMessage("and now?"))
    with pytest.raises(ValueError, match="longest stretch of text .* was taken as the document"):
        HomerLLM(engine=engine).invoke(history)
    with pytest.raises(ValueError, match="no message holds a document"):
        HomerLLM(engine=engine).invoke([HumanMessage("")] + [AIMessage("")] * 60)


def test_document_too_long_for_the_model():
    engine = ScriptedEngine(["x"], window=64, layers=2)  # chunk 32, 2 layers: only a shallow tree fits
    with pytest.raises(ValueError, match="merge tree of height"):
        HomerLLM(engine=engine).invoke("Q?", documents=["word " * 400])
    with pytest.raises(ValueError, match="prefix .* and suffix"):  # the question alone fills the chunk
        HomerLLM(engine=engine).invoke("Q" * 80, documents=["some text"])


def test_unsupported_or_missing_model(tmp_path):
    from tiny import tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    missing = HomerLLM(model=str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="cannot load|not found"):
        missing.invoke("hi")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=110)).save_pretrained(tmp_path / "gpt2")
    tiny_tokenizer().save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="HOMER supports"):
        HomerLLM(model=str(tmp_path / "gpt2")).invoke("hi")


def test_other_bad_input():
    llm = HomerLLM(engine=ScriptedEngine(["x"]))
    with pytest.raises(TypeError, match="unexpected call arguments"):
        llm.invoke("hi", max_token=3)
    with pytest.raises(ValueError, match="text only"):
        llm.invoke([HumanMessage([{"type": "image", "url": "https://example.com/a.png"}])])
    with pytest.raises(TypeError, match="str or langchain Document"):
        llm.invoke("hi", documents=[123])
    with pytest.raises(ValueError, match="every document is empty"):
        llm.invoke("hi", documents=["  "])
    with pytest.raises(ValueError, match="NUL"):
        llm.invoke("hi", documents=["bin\x00ary"])


def test_concurrent_threads_share_one_engine():
    engine = shared_tiny_engine()
    llm = HomerLLM(engine=engine, max_tokens=3)
    expected = llm.invoke("same").content
    results: list[str] = []

    def work() -> None:
        results.append(llm.invoke("same").content)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [expected] * 3
