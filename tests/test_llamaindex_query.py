"""Whole-document querying with LlamaIndex: one LLM call per question with HomerLLM, several with
a plain 8k-window LLM. Fast tests use the tiny engine or a fake LLM; the default-model passkey
test is marked slow."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from llama_index.core import Document, Settings, SummaryIndex
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship
from llama_index.llms.homer import (
    DEFAULT_CONTEXT_WINDOW,
    HomerLLM,
    HomerQueryEngine,
    WholeDocumentParser,
    whole_document_index,
)
from test_llamaindex_support import LLMEventCounter, passkey_document, tiny_engine

PASSKEY = "71932"
QUESTION = "What is the pass key?"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture
def clean_settings():
    """Restore LlamaIndex's global Settings after a test that sets them."""
    saved = {k: getattr(Settings, k) for k in ("_llm", "_callback_manager", "_node_parser", "_transformations",
                                                 "_prompt_helper")}
    yield Settings
    for k, v in saved.items():
        setattr(Settings, k, v)


def small_doc(key: str = PASSKEY, n: int = 40) -> str:
    return passkey_document(n * 20, len, key)  # tiny tokenizer: one token per character


def user_contents(payload: dict[str, Any]) -> list[str]:
    return [m.content for m in payload.get("messages", []) if m.role == "user"]


class FakeLLM(CustomLLM):
    """A plain (non-HOMER) LLM with the default model's native 8k window; counts its calls."""

    context_window: int = 8192
    num_output: int = 256
    prompts: list[str] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.num_output, model_name="fake-8k")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.prompts.append(prompt)
        return CompletionResponse(text="I do not know.")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        yield self.complete(prompt, formatted=formatted)


# ---------------------------------------------------------------------- node parser and index
def test_whole_document_parser_keeps_each_document_whole():
    docs = [Document(text="First document.\n\nSecond paragraph. " * 400, metadata={"title": "a"}),
            Document(text="Another one.", metadata={"title": "b"})]
    nodes = WholeDocumentParser()(docs)
    assert [n.get_content() for n in nodes] == [d.text for d in docs]
    assert [n.metadata["title"] for n in nodes] == ["a", "b"]
    assert [n.relationships[NodeRelationship.SOURCE].node_id for n in nodes] == [d.doc_id for d in docs]
    with pytest.raises(ValueError, match="empty"):
        WholeDocumentParser()([Document(text="  ")])


def test_whole_document_index_has_one_node_per_document():
    docs = [Document(text="a " * 5000), Document(text="b " * 7000)]
    index = whole_document_index(docs)
    assert isinstance(index, SummaryIndex)
    assert len(index.index_struct.nodes) == 2
    with pytest.raises(ValueError):
        whole_document_index([])
    with pytest.raises(TypeError):
        whole_document_index(["plain string"])


# ---------------------------------------------------------------------- the difference HOMER makes
def test_plain_8k_llm_splits_a_32k_document_but_the_homer_window_does_not(clean_settings):
    """The same SummaryIndex flow over a 32k-token document: a plain 8k-window LLM is called
    several times (compact, then refine, each call seeing a slice); with the window HomerLLM
    advertises it is one call holding the whole document."""
    doc = passkey_document(32_000, lambda s: len(Settings.tokenizer(s)), PASSKEY)
    assert len(Settings.tokenizer(doc)) >= 32_000
    index = SummaryIndex.from_documents([Document(text=doc)])

    plain = FakeLLM(prompts=[])
    plain_counter = LLMEventCounter()
    Settings.callback_manager = plain_counter.manager()
    index.as_query_engine(llm=plain).query(QUESTION)
    assert len(plain_counter.starts) == len(plain.prompts) >= 4
    assert sum(PASSKEY in p for p in plain.prompts) <= 2  # most calls never see the passkey
    assert all(len(Settings.tokenizer(p)) <= 8192 for p in plain.prompts)

    wide = FakeLLM(prompts=[], context_window=HomerLLM().metadata.context_window)  # no model loaded
    wide_counter = LLMEventCounter()
    Settings.callback_manager = wide_counter.manager()
    index.as_query_engine(llm=wide).query(QUESTION)
    assert len(wide_counter.starts) == len(wide.prompts) == 1
    assert PASSKEY in wide.prompts[0]


def test_summary_index_from_documents_with_homer_is_one_call(engine, clean_settings):
    """Default flow: from_documents splits into nodes (here 128-token ones, to make it visible),
    compact mode repacks them all into one HomerLLM call, whose document holds every node."""
    counter = LLMEventCounter()
    Settings.llm = HomerLLM(engine=engine, max_new_tokens=4)
    Settings.callback_manager = counter.manager()
    doc = small_doc()
    index = SummaryIndex.from_documents([Document(text=doc)],
                                        transformations=[SentenceSplitter(chunk_size=128, chunk_overlap=0)])
    assert len(index.index_struct.nodes) > 2
    response = index.as_query_engine().query(QUESTION)
    assert len(counter.starts) == len(counter.ends) == 1
    (content,) = user_contents(counter.starts[0])
    assert PASSKEY in content and content.count("pass key is") == 1
    info = counter.ends[0]["response"].additional_kwargs
    assert info["document_rule"] == "fences" and info["tree_height"] >= 1
    assert response.response == counter.ends[0]["response"].message.content


def test_whole_document_settings_recipe_sends_the_exact_document(engine, clean_settings):
    counter = LLMEventCounter()
    Settings.llm = HomerLLM(engine=engine, max_new_tokens=4)
    Settings.callback_manager = counter.manager()
    Settings.node_parser = WholeDocumentParser()
    docs = [Document(text=small_doc()), Document(text=small_doc("55555", n=20))]
    index = SummaryIndex.from_documents(docs)
    assert len(index.index_struct.nodes) == 2
    index.as_query_engine().query(QUESTION)
    assert len(counter.starts) == 1
    (content,) = user_contents(counter.starts[0])
    assert docs[0].text + "\n\n" + docs[1].text in content


# ---------------------------------------------------------------------- HomerQueryEngine
def test_homer_query_engine_answers_in_one_call(engine):
    counter = LLMEventCounter()
    llm = HomerLLM(engine=engine, max_new_tokens=4, callback_manager=counter.manager())
    docs = [Document(text=small_doc()), Document(text="A second, short document.")]
    qe = HomerQueryEngine.from_documents(docs, llm=llm)
    response = qe.query(QUESTION)
    assert len(counter.starts) == 1
    assert [n.node.get_content() for n in response.source_nodes] == [d.text for d in docs]
    (content,) = user_contents(counter.starts[0])
    assert docs[0].text in content and QUESTION in content
    assert response.response == counter.ends[0]["response"].message.content
    qe.query("Which documents are there?")
    assert len(counter.starts) == 2  # one call per question


async def test_homer_query_engine_async_and_streaming(engine):
    counter = LLMEventCounter()
    llm = HomerLLM(engine=engine, max_new_tokens=5, callback_manager=counter.manager())
    docs = [Document(text=small_doc())]
    sync = HomerQueryEngine.from_documents(docs, llm=llm).query(QUESTION).response
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        response = await HomerQueryEngine.from_documents(docs, llm=llm).aquery(QUESTION)
    finally:
        task.cancel()
    assert response.response == sync
    assert ticks > 0
    streaming = HomerQueryEngine.from_documents(docs, llm=llm, streaming=True).query(QUESTION)
    assert isinstance(streaming, StreamingResponse)
    tokens = list(streaming.response_gen)
    assert len(tokens) >= 2 and "".join(tokens) == sync
    assert len(counter.starts) == 3


def test_homer_query_engine_errors(engine):
    qe = HomerQueryEngine.from_documents([Document(text="text")], llm=HomerLLM(engine=engine))
    with pytest.raises(ValueError, match="question is empty"):
        qe.query("  ")
    with pytest.raises(ValueError, match="documents is empty"):
        HomerQueryEngine.from_documents([], llm=HomerLLM(engine=engine))


# ---------------------------------------------------------------------- the default model (slow)
def _timed(label: str, start: float) -> None:
    print(f"[timing] {label}: {time.perf_counter() - start:.1f} s")


# The passkey benchmark's own shape (Mohtashami & Jaggi 2023; homer_llm.evaluation's passkey task):
# the instruction heads the haystack and the question asks for the number only. Measured with the
# LlamaIndex chat QA template on plain 2k-token prompts, SmolLM2-135M-Instruct answers
# "What is the pass key?" alone with "The pass key is the pass number." at depth 0.2, and
# "... Reply with the number only." with the key at depths 0.2 and 0.5.
PASSKEY_INSTRUCTION = (
    "A pass key is hidden somewhere in the long text below, among many lines that do not matter. "
    "Find the pass key and remember it: you will be asked for it at the end.\n\n"
)
PASSKEY_QUESTION = "What is the pass key? Reply with the number only."


@pytest.mark.slow
def test_default_model_summary_index_finds_a_passkey_in_32k_tokens_in_one_call(clean_settings):
    start = time.perf_counter()
    llm = HomerLLM(max_new_tokens=16)
    Settings.llm = llm
    counter = LLMEventCounter()
    Settings.callback_manager = counter.manager()
    # the whole-document recipe: from_documents keeps the exact text (the default 1024-token nodes
    # overlap by 200 tokens, so their repack is ~39.7k tokens with the passage repeated; measured
    # there: also one call, but the answer was "7193", one digit short)
    Settings.node_parser = WholeDocumentParser()
    doc = PASSKEY_INSTRUCTION + passkey_document(32_000, llm.engine.count_tokens, PASSKEY, depth=0.5)
    doc_tokens = llm.engine.count_tokens(doc)
    assert 32_000 <= doc_tokens < 32_200
    index = SummaryIndex.from_documents([Document(text=doc)])
    response = index.as_query_engine().query(PASSKEY_QUESTION)
    _timed("SummaryIndex.from_documents + 32k passkey query (incl. load and calibration)", start)
    assert len(counter.starts) == len(counter.ends) == 1
    info = counter.ends[0]["response"].additional_kwargs
    print(f"[homer] {info}")
    assert info["document_tokens"] == doc_tokens and info["document_rule"] == "fences"  # all of it, in one call
    # the hybrid read (the default): the compressed document plus the leaves read in full, a
    # fraction of the document (the compressed cache alone would be at most one chunk)
    assert info["tree_height"] >= 3 and info["cache_tokens"] < doc_tokens // 3
    assert re.search(rf"\b{PASSKEY}\b", str(response)), str(response)


@pytest.mark.slow
def test_default_model_stream_complete_and_acomplete():
    start = time.perf_counter()
    llm = HomerLLM(max_new_tokens=16)
    chunks = list(llm.stream_complete("Name three colours of the rainbow."))
    assert len(chunks) >= 3 and all(c.delta for c in chunks[:-1])
    assert "".join(c.delta for c in chunks) == chunks[-1].text

    async def main() -> str:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        out = await llm.acomplete("Name three colours of the rainbow.")
        task.cancel()
        assert ticks > 0
        return out.text

    assert asyncio.run(main()) == chunks[-1].text
    _timed("default model stream_complete + acomplete", start)
    assert DEFAULT_CONTEXT_WINDOW == llm.metadata.context_window
