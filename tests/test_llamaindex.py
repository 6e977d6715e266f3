"""HomerLLM as a LlamaIndex LLM, on a tiny engine: metadata, templates, streaming, async, events."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_index.core import Settings
from llama_index.core.llms import LLM, ChatMessage
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
from llama_index.llms.homer import DEFAULT_CONTEXT_WINDOW, HomerLLM, split_document, tree_capacity
from test_llamaindex_support import LLMEventCounter, recording, tiny_engine

from homer_llm import DOCUMENT_PLACEHOLDER, GenerationConfig, HomerConfig, HomerModel, split_text

QUESTION = "What is the pass key?"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture
def llm(engine):
    return HomerLLM(engine=engine, max_new_tokens=6)


def long_doc(n: int = 60) -> str:
    return " ".join(f"Line {i} says hello." for i in range(n))


def qa_prompt(document: str) -> str:
    return DEFAULT_TEXT_QA_PROMPT.format(context_str=document, query_str=QUESTION)


def expected(engine, messages, document=None, max_new_tokens=6) -> str:
    parts = engine.prepare_chat(messages, document)
    return engine.generate(parts, GenerationConfig(max_new_tokens=max_new_tokens)).text


# ---------------------------------------------------------------------- packaging and metadata
def test_import_path_is_a_namespace_next_to_llama_index_core():
    import llama_index.core
    import llama_index.llms.homer as pkg

    assert Path(pkg.__file__).parts[-5:-1] == ("integrations", "llama_index", "llms", "homer")
    assert "integrations" not in Path(llama_index.core.__file__).parts  # the installed core, untouched
    assert issubclass(HomerLLM, FunctionCallingLLM) and issubclass(HomerLLM, LLM)


def test_default_metadata_does_not_load_the_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("metadata must not load the model")

    monkeypatch.setattr(HomerModel, "shared", refuse)
    llm = HomerLLM()
    meta = llm.metadata
    assert meta.context_window == DEFAULT_CONTEXT_WINDOW > 8192
    assert meta.is_chat_model and not meta.is_function_calling_model
    assert meta.num_output == 256
    assert meta.model_name == "SmolLM2-135M-Instruct"
    assert HomerLLM(model="/models/x", context_window=300_000, max_new_tokens=9).metadata.model_dump(
        include={"context_window", "model_name", "num_output"}
    ) == {"context_window": 300_000, "model_name": "/models/x", "num_output": 9}


def test_metadata_of_an_injected_engine_is_its_tree_capacity_not_its_window(engine):
    meta = HomerLLM(engine=engine).metadata
    assert meta.model_name == "tiny-llama"
    assert meta.context_window == tree_capacity(engine) == 768 * 2**5
    assert meta.context_window > engine.window
    # a configured window is advertised as is, never clamped to the native window
    assert HomerLLM(engine=engine, context_window=10**7).metadata.context_window == 10**7


def test_settings_llm_accepts_it_without_loading(monkeypatch):
    monkeypatch.setattr(HomerModel, "shared", lambda *a, **k: pytest.fail("loaded too early"))
    previous = Settings._llm
    try:
        llm = HomerLLM()
        Settings.llm = llm
        assert Settings.llm is llm
        assert Settings.llm.metadata.context_window == DEFAULT_CONTEXT_WINDOW
    finally:
        Settings._llm = previous


def test_lazy_shared_engine_loads_once_per_settings(monkeypatch, engine):
    calls = []

    def fake_load(cls, model=None, **kwargs):
        calls.append((model, kwargs))
        return engine

    monkeypatch.setattr(HomerModel, "_shared", {})
    monkeypatch.setattr(HomerModel, "load", classmethod(fake_load))
    a, b = HomerLLM(), HomerLLM()
    assert a._engine is None
    assert a.engine is b.engine is engine
    # loaded once, through HomerModel.shared, with the default settings (the hybrid read)
    assert len(calls) == 1 and calls[0][0] is None
    hybrid = HomerConfig(focus_leaves=3, focus_keep_document=True)
    assert HomerModel.shared_key(None, **calls[0][1]) == HomerModel.shared_key(None, homer=hybrid)
    assert HomerLLM(model="m", device="cpu", dtype="bfloat16").engine is engine
    assert calls[-1][0] == "m" and calls[-1][1]["device"] == "cpu" and calls[-1][1]["dtype"] == "bfloat16"
    # explicit defaults are the same settings: no second load
    assert HomerLLM(dtype="auto", attn_implementation="sdpa", merge_attention="auto").engine is engine
    assert len(calls) == 2


def test_shares_the_langchain_adapters_engine(monkeypatch, engine):
    langchain_homer = pytest.importorskip("langchain_homer", reason="needs the langchain extra installed")
    monkeypatch.setattr(HomerModel, "_shared", {})
    monkeypatch.setattr(HomerModel, "load", classmethod(lambda cls, model=None, **kw: tiny_engine()))
    assert HomerLLM().engine is langchain_homer.HomerLLM().get_engine()
    assert HomerLLM(dtype="bfloat16").engine is langchain_homer.HomerLLM(dtype="bfloat16").get_engine()
    assert HomerLLM(dtype="bfloat16").engine is not HomerLLM().engine


def test_constructor_checks_private_arguments():
    with pytest.raises(TypeError, match="engine"):
        HomerLLM(engine="not an engine")
    with pytest.raises(TypeError, match="get_or_compress"):
        HomerLLM(document_cache=object())
    with pytest.raises(ValueError):
        HomerLLM(max_new_tokens=0)


# ---------------------------------------------------------------------- the document rule
def test_rule_fences_on_the_llamaindex_qa_template():
    doc = "Para one.\n\nPara two with --- inside.\n\n---\n\nPara three."
    text = qa_prompt(doc)
    split = split_document(text)
    assert split.rule == "fences"
    assert split.document == doc
    assert split.head.startswith("Context information is below.") and split.head.endswith("-\n")
    assert split.tail.startswith("\n---") and split.tail.rstrip().endswith("Answer:")
    assert QUESTION in split.tail


def test_rule_paragraphs_and_whole():
    text = "Read this report.\n\n" + "A long body. " * 50 + "\n\nMore body.\n\nQuestion: who?"
    split = split_document(text)
    assert split.rule == "paragraphs"
    assert split.head == "Read this report.\n\n"
    assert split.tail == "\n\nQuestion: who?"
    assert split.document.startswith("A long body.") and split.document.endswith("More body.")
    whole = split_document("  one single paragraph without breaks  ")
    assert (whole.rule, whole.head, whole.document, whole.tail) == ("whole", "  ", "one single paragraph without breaks", "  ")


def test_rule_falls_back_when_fences_leave_a_long_head():
    # a markdown document full of rules: fences would push half of it into the prefix
    body = ("Section text. " * 30 + "\n\n---\n\n") * 4
    text = "Summarize:\n\n" + body + "\n\nSummary please."
    split = split_document(text, lambda s: len(s) <= 100)
    assert split.rule == "paragraphs"
    assert split.head == "Summarize:\n\n" and split.tail.lstrip("\n") == "Summary please."
    assert split.document == body.strip()


def test_rule_errors():
    with pytest.raises(ValueError, match="empty"):
        split_document("  \n ")
    with pytest.raises(TypeError):
        split_document(b"bytes")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab -=\n\t")), min_size=1, max_size=80).filter(str.strip),
       st.integers(0, 30))
def test_rule_never_changes_text(text, limit):
    split = split_document(text, lambda s: len(s) <= limit)
    assert split.head + split.document + split.tail == text
    assert split.document.strip() == split.document and split.document


# ---------------------------------------------------------------------- prompts -> engine
def test_short_completion_uses_the_chat_template_unchanged(llm, engine):
    out = llm.complete("Say hello")
    assert out.text == expected(engine, [{"role": "user", "content": "Say hello"}])
    assert out.additional_kwargs["document_tokens"] == 0 and out.additional_kwargs["document_rule"] is None
    assert out.raw["usage"]["prompt_tokens"] == len(engine.prepare_chat([{"role": "user", "content": "Say hello"}]))


def test_system_prompt_and_formatted_prompts(engine):
    llm = HomerLLM(engine=engine, max_new_tokens=6, system_prompt="Be brief.")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert llm.complete("Hi").raw["usage"]["prompt_tokens"] == len(engine.prepare_chat(msgs))
    raw = llm.complete("Hi there", formatted=True)  # formatted: no chat template at all
    plain = split_text(engine.tokenizer, "Hi there", "", "")
    assert raw.raw["usage"]["prompt_tokens"] == len(plain)
    assert raw.text == engine.generate(plain, GenerationConfig(max_new_tokens=6)).text


def test_long_completion_puts_the_document_into_homer_context(llm, engine):
    doc = long_doc()
    prompt = qa_prompt(doc)
    out = llm.complete(prompt)
    split = split_document(prompt)
    msgs = [{"role": "user", "content": split.head + DOCUMENT_PLACEHOLDER + split.tail}]
    assert out.text == expected(engine, msgs, doc)
    info = out.additional_kwargs
    assert info["document_rule"] == "fences"
    assert info["document_tokens"] == engine.count_tokens(doc)
    assert info["tree_height"] >= 1 and info["cache_tokens"] < info["input_tokens"]


def test_chat_uses_the_longest_message_and_the_template(llm, engine):
    doc = long_doc()
    messages = [
        ChatMessage(role="system", content="You answer questions."),
        ChatMessage(role="user", content=qa_prompt(doc)),
    ]
    out = llm.chat(messages)
    split = split_document(qa_prompt(doc))
    msgs = [{"role": "system", "content": "You answer questions."},
            {"role": "user", "content": split.head + DOCUMENT_PLACEHOLDER + split.tail}]
    assert out.message.role == "assistant"
    assert out.message.content == expected(engine, msgs, doc)
    assert out.additional_kwargs["document_rule"] == "fences"


def test_final_assistant_message_is_continued(llm, engine):
    """A trailing assistant message is a prefill: generation continues it (and steers pruning)."""
    doc = long_doc()
    messages = [ChatMessage(role="user", content=qa_prompt(doc)), ChatMessage(role="assistant", content="It is")]
    out = llm.chat(messages)
    split = split_document(qa_prompt(doc))
    msgs = [{"role": "user", "content": split.head + DOCUMENT_PLACEHOLDER + split.tail},
            {"role": "assistant", "content": "It is"}]
    parts = engine.prepare_chat(msgs, doc)
    assert engine.tokenizer.decode(list(parts.suffix)).endswith("<|im_start|>assistant\nIt is")
    assert out.message.content == expected(engine, msgs, doc)


def test_generation_kwargs(llm):
    assert llm.complete("Say hello", max_tokens=2).additional_kwargs["output_tokens"] == 2
    assert llm.complete("Say hello", max_new_tokens=3).additional_kwargs["output_tokens"] == 3
    first = llm.complete("Say hello", max_tokens=6).text
    assert first, "the tiny model produced nothing to stop on"
    stop = first[1:3]
    cut = llm.complete("Say hello", max_tokens=6, stop=[stop])
    assert cut.text == first[: first.find(stop)] and cut.additional_kwargs["finish_reason"] == "stop"


# ---------------------------------------------------------------------- streaming
def test_stream_complete_yields_several_deltas_that_add_up(llm):
    prompt = qa_prompt(long_doc())
    chunks = list(llm.stream_complete(prompt))
    assert len(chunks) >= 3
    assert "".join(c.delta for c in chunks) == chunks[-1].text == llm.complete(prompt).text
    assert all(c.raw is None for c in chunks[:-1])
    assert chunks[-1].raw["usage"]["completion_tokens"] == 6
    assert chunks[-1].additional_kwargs["document_rule"] == "fences"


def test_stream_chat(llm):
    messages = [ChatMessage(role="user", content=qa_prompt(long_doc()))]
    chunks = list(llm.stream_chat(messages))
    assert len(chunks) >= 3
    assert "".join(c.delta for c in chunks) == chunks[-1].message.content == llm.chat(messages).message.content


def test_abandoned_stream_releases_the_model(llm, engine):
    stream = llm.stream_complete("Say hello")
    next(stream)
    stream.close()
    acquired = []
    t = threading.Thread(target=lambda: acquired.append(engine.lock.acquire(timeout=5) and engine.lock.release() is None))
    t.start()
    t.join(10)
    assert acquired == [True]


# ---------------------------------------------------------------------- async
async def test_acomplete_and_achat_in_a_running_loop(llm):
    prompt = qa_prompt(long_doc())
    out = await llm.acomplete(prompt)
    assert out.text == llm.complete(prompt).text
    chat = await llm.achat([ChatMessage(role="user", content=prompt)])
    assert chat.message.content == out.text


async def test_async_streams(llm):
    prompt = qa_prompt(long_doc())
    gen = await llm.astream_complete(prompt)
    chunks = [c async for c in gen]
    assert len(chunks) >= 3 and chunks[-1].text == llm.complete(prompt).text
    gen = await llm.astream_chat([ChatMessage(role="user", content=prompt)])
    chat_chunks = [c async for c in gen]
    assert [c.delta for c in chat_chunks] == [c.delta for c in chunks]


async def test_async_stream_stopped_early_releases_the_model(llm, engine):
    gen = await llm.astream_complete("Say hello")
    async for _ in gen:
        break
    await gen.aclose()
    # the worker thread closes the engine stream (and its lock) after its next delta
    assert await asyncio.to_thread(lambda: engine.lock.acquire(timeout=5) and (engine.lock.release() or True))


class SlowCache:
    """A document cache (duck type) that takes its time: proves async calls leave the loop free."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[tuple] = []
        self.store: dict[tuple, object] = {}

    def get_or_compress(self, engine, parts, progress):
        self.calls.append((engine, parts, progress))
        time.sleep(self.delay)
        key = (parts.prefix, parts.context)
        hit = key in self.store
        if not hit:
            self.store[key] = engine.compress(parts)
        return self.store[key], hit


async def test_async_calls_do_not_block_the_event_loop(engine):
    llm = HomerLLM(engine=engine, max_new_tokens=2, document_cache=SlowCache(0.5))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await llm.acomplete(qa_prompt(long_doc()))
    finally:
        task.cancel()
    assert ticks >= 20  # the loop kept running during the 0.5 s the cache took


def test_document_cache_is_used_for_documents_only(engine):
    cache = SlowCache(0.0)
    llm = HomerLLM(engine=engine, max_new_tokens=4, document_cache=cache)
    llm.complete("Say hello")
    assert cache.calls == []  # no document: nothing to cache
    first = llm.complete(qa_prompt(long_doc()))
    second = llm.complete(DEFAULT_TEXT_QA_PROMPT.format(context_str=long_doc(), query_str="Another question?"))
    assert len(cache.calls) == 2 and cache.calls[0][0] is engine
    assert cache.calls[0][1].context == cache.calls[1][1].context  # the same document ids
    assert (first.additional_kwargs["cache_hit"], second.additional_kwargs["cache_hit"]) == (False, True)


def test_real_document_cache_reuses_the_document(engine):
    from homer_llm.doc_cache import DocumentCache

    cache = DocumentCache()  # question-agnostic mode: the document is compressed once
    llm = HomerLLM(engine=engine, max_new_tokens=4, document_cache=cache)
    doc = long_doc()
    a = llm.complete(DEFAULT_TEXT_QA_PROMPT.format(context_str=doc, query_str="First?"))
    b = llm.complete(DEFAULT_TEXT_QA_PROMPT.format(context_str=doc, query_str="Second one?"))
    assert (a.additional_kwargs["cache_hit"], b.additional_kwargs["cache_hit"]) == (False, True)
    assert cache.stats()["hits"] == 1


# ---------------------------------------------------------------------- callbacks and instrumentation
def test_each_call_is_exactly_one_llm_event(engine):
    counter = LLMEventCounter()
    llm = HomerLLM(engine=engine, max_new_tokens=3, callback_manager=counter.manager())
    prompt = qa_prompt(long_doc())
    llm.complete(prompt)
    assert (len(counter.starts), len(counter.ends)) == (1, 1)
    llm.chat([ChatMessage(role="user", content=prompt)])
    assert (len(counter.starts), len(counter.ends)) == (2, 2)  # chat does not go through complete
    stream = llm.stream_complete(prompt)
    assert (len(counter.starts), len(counter.ends)) == (3, 2)
    last = list(stream)[-1]
    assert (len(counter.starts), len(counter.ends)) == (3, 3)
    assert counter.ends[-1]["completion"].text == last.text
    list(llm.stream_chat([ChatMessage(role="user", content="Hi")]))
    assert (len(counter.starts), len(counter.ends)) == (4, 4)


async def test_async_calls_emit_one_llm_event_each(engine):
    counter = LLMEventCounter()
    llm = HomerLLM(engine=engine, max_new_tokens=3, callback_manager=counter.manager())
    await llm.acomplete("Hi")
    await llm.achat([ChatMessage(role="user", content="Hi")])
    gen = await llm.astream_chat([ChatMessage(role="user", content="Hi")])
    [c async for c in gen]
    assert (len(counter.starts), len(counter.ends)) == (3, 3)


def test_instrumentation_events(llm):
    with recording() as rec:
        llm.complete("Hi")
    assert rec.names().count("LLMCompletionStartEvent") == 1
    assert rec.names().count("LLMCompletionEndEvent") == 1
    with recording() as rec:
        chunks = list(llm.stream_chat([ChatMessage(role="user", content="Hi")]))
    names = rec.names()
    assert names.count("LLMChatStartEvent") == 1 and names.count("LLMChatEndEvent") == 1
    assert names.count("LLMChatInProgressEvent") == len(chunks)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompts_are_refused(llm, prompt):
    with pytest.raises(ValueError, match="empty"):
        llm.complete(prompt)
    with pytest.raises(ValueError, match="empty"):
        llm.stream_complete(prompt)


def test_bad_messages_are_refused(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.chat([])
    with pytest.raises(ValueError, match="empty"):
        llm.chat([ChatMessage(role="user", content=" ")])
    with pytest.raises(TypeError):
        llm.complete(42)
    with pytest.raises(TypeError, match="ChatMessage"):
        llm.chat([{"role": "user", "content": "hi"}])


async def test_async_errors_surface(llm):
    with pytest.raises(ValueError, match="empty"):
        await llm.acomplete("")
    with pytest.raises(ValueError, match="empty"):
        await llm.astream_chat([])


def test_prompt_whose_instructions_cannot_fit_a_chunk_fails_at_call_time(llm):
    # the system message (1200 tokens, more than a chunk) is shorter than the user message, so it
    # stays in the prefix while the document is found in the user message
    messages = [ChatMessage(role="system", content="Rule. " * 200), ChatMessage(role="user", content=qa_prompt(long_doc()))]
    with pytest.raises(ValueError, match="document rule: fences"):
        llm.stream_chat(messages)  # raised before any delta is requested
