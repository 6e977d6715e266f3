"""Whole-document querying: one node per document, one LLM call per question.

Three ways, from most to least explicit:

1. ``HomerQueryEngine.from_documents(docs, llm=HomerLLM()).query("...")``: the documents, exactly
   as given, go into one prompt (LlamaIndex's QA template, ``compact`` mode) and one call.
2. ``whole_document_index(docs)``: a ``SummaryIndex`` with one node per document (no splitting), so
   ``.as_query_engine()`` sends the exact documents in one call.
3. ``SummaryIndex.from_documents(docs)`` with ``Settings.llm = HomerLLM()``: the default node
   parser still cuts the documents into 1024-token nodes (with 200 overlapping tokens), but
   ``compact`` mode repacks them into as few prompts as ``HomerLLM.metadata.context_window``
   (1M tokens by default) allows: one call. Set ``Settings.node_parser = WholeDocumentParser()``
   (or pass ``transformations=[WholeDocumentParser()]``) so the exact text goes in instead.

A plain LLM with an 8k window gets the same 32k-token document in several calls (compact, then
refine), each seeing a fraction of it; ``tests/test_llamaindex_query.py`` shows both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core import SummaryIndex
from llama_index.core.base.response.schema import RESPONSE_TYPE
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.indices.prompt_helper import PromptHelper
from llama_index.core.llms.llm import LLM
from llama_index.core.node_parser.interface import NodeParser
from llama_index.core.node_parser.node_utils import build_nodes_from_splits
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.response_synthesizers import BaseSynthesizer, ResponseMode, get_response_synthesizer
from llama_index.core.schema import BaseNode, Document, MetadataMode, NodeWithScore, QueryBundle
from llama_index.core.settings import Settings

from .base import HomerLLM


class WholeDocumentParser(NodeParser):
    """A node parser that never splits: one node per document, with the document's exact text.

    Use it as ``Settings.node_parser`` or in ``transformations=[...]`` so an index built with
    ``from_documents`` hands HomerLLM whole documents. Empty documents are refused.
    """

    @classmethod
    def class_name(cls) -> str:
        return "WholeDocumentParser"

    def _parse_nodes(self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any) -> list[BaseNode]:
        out: list[BaseNode] = []
        for node in nodes:
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            if not text.strip():
                raise ValueError(f"document {node.node_id!r} is empty")
            out.extend(build_nodes_from_splits([text], node, id_func=self.id_func))
        return out


def whole_document_index(documents: Sequence[Document], **kwargs: Any) -> SummaryIndex:
    """A ``SummaryIndex`` with exactly one node per document (their exact text, metadata kept).

    ``kwargs`` go to ``SummaryIndex`` (e.g. ``callback_manager``, ``show_progress``).
    """
    if not documents:
        raise ValueError("documents is empty")
    for doc in documents:
        if not isinstance(doc, BaseNode):
            raise TypeError(f"documents must be llama_index Documents, got {type(doc).__name__}")
    nodes = WholeDocumentParser()(list(documents))
    return SummaryIndex(nodes=nodes, **kwargs)


class HomerQueryEngine(CustomQueryEngine):
    """Questions over whole documents, answered in one LLM call each.

    The documents (one node each, exact text) fill the ``{context_str}`` of LlamaIndex's QA
    template, packed by a ``compact`` synthesizer whose PromptHelper uses the LLM's own window (for
    ``HomerLLM`` also its own tokenizer), so nothing is split while it fits the HOMER window.
    Responses carry the documents as ``source_nodes``. Documents longer than the window are
    split by the PromptHelper and refined over several calls (the usual LlamaIndex behaviour).

    Examples:
        >>> engine = HomerQueryEngine.from_documents([Document(text=long_text)])
        >>> engine.query("What is the pass key?").response
    """

    llm: LLM = Field(description="The LLM (default: Settings.llm).")
    nodes: list[BaseNode] = Field(description="One node per document.")
    text_qa_template: BasePromptTemplate | None = Field(default=None, description="QA prompt (None: LlamaIndex's).")
    streaming: bool = Field(default=False, description="Return StreamingResponse objects.")

    _synthesizer: BaseSynthesizer | None = PrivateAttr(default=None)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        llm: LLM | None = None,
        *,
        text_qa_template: BasePromptTemplate | None = None,
        streaming: bool = False,
        **kwargs: Any,
    ) -> HomerQueryEngine:
        """Build the engine over ``documents`` (default LLM: ``Settings.llm``).

        Without an explicit ``callback_manager`` the engine shares the LLM's, so handlers set on the
        LLM (or through ``Settings.callback_manager``) see the query and its one LLM call.
        """
        if not documents:
            raise ValueError("documents is empty")
        nodes = WholeDocumentParser()(list(documents))
        llm = llm or Settings.llm
        kwargs.setdefault("callback_manager", llm.callback_manager)
        return cls(llm=llm, nodes=nodes, text_qa_template=text_qa_template, streaming=streaming, **kwargs)

    @property
    def synthesizer(self) -> BaseSynthesizer:
        if self._synthesizer is None:
            meta = self.llm.metadata
            tokenizer = self.llm.tokenize if isinstance(self.llm, HomerLLM) else None
            helper = PromptHelper(context_window=meta.context_window, num_output=meta.num_output, tokenizer=tokenizer)
            self._synthesizer = get_response_synthesizer(
                llm=self.llm,
                prompt_helper=helper,
                text_qa_template=self.text_qa_template,
                response_mode=ResponseMode.COMPACT,
                callback_manager=self.callback_manager,
                streaming=self.streaming,
            )
        return self._synthesizer

    def _scored(self) -> list[NodeWithScore]:
        return [NodeWithScore(node=node, score=None) for node in self.nodes]

    @staticmethod
    def _check(query_str: str) -> QueryBundle:
        if not isinstance(query_str, str) or not query_str.strip():
            raise ValueError(f"the question is empty: {query_str!r}")
        return QueryBundle(query_str)

    def custom_query(self, query_str: str) -> RESPONSE_TYPE:
        return self.synthesizer.synthesize(self._check(query_str), nodes=self._scored())

    async def acustom_query(self, query_str: str) -> RESPONSE_TYPE:
        return await self.synthesizer.asynthesize(self._check(query_str), nodes=self._scored())
