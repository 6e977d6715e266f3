"""``HomerLLM``: a LlamaIndex LLM that puts whole long documents into a local model's context.

The engine is ``homer_llm.HomerModel`` (HOMER hierarchical context merging); this adapter only
turns LlamaIndex prompts and messages into HOMER's prefix / document / suffix, and results back
into LlamaIndex responses. The model loads lazily, on the first call, through the process-wide
``HomerModel.shared`` (the LangChain adapter gets the same instance for the same settings).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.llm import default_completion_to_prompt

from homer_llm import DOCUMENT_PLACEHOLDER, GenerationConfig, HomerConfig, HomerModel, PromptParts, split_text

from ._threads import iterate_in_thread
from .document import DocumentSplit, split_document

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_WINDOW = 2**20
"""Advertised context window (tokens) when none is configured: 1M, far below what the default
model's tree can take (chunk 4096 x 2**29 leaves) and above any document a CPU can compress in
reasonable time. An injected engine advertises ``min(this, its tree capacity)``."""

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def tree_capacity(engine: HomerModel) -> int:
    """Context tokens the engine's tallest merge tree can take (HOMER.md section 3).

    A tree of height H needs H + 1 layers, so H <= L - 1 and N = 2**(L-1) leaves of E context
    tokens each; E is the chunk minus the prefix and suffix, for which a quarter of the chunk is
    reserved (the same budget the document rule gives them).
    """
    chunk = engine.chunk_len
    per_leaf = chunk - chunk // 4
    return per_leaf * 2 ** (engine.parts.num_layers - 1)


@dataclass(frozen=True)
class _Prepared:
    """A prompt ready for the engine: its parts and how the document was found."""

    parts: PromptParts
    split: DocumentSplit | None

    def info(self) -> dict[str, Any]:
        return {
            "document_tokens": len(self.parts.context),
            "document_rule": self.split.rule if self.split is not None else None,
        }


class HomerLLM(CustomLLM):
    """A local Hugging Face model with HOMER: whole documents in one call, far past the native window.

    Examples:
        >>> from llama_index.core import Settings
        >>> from llama_index.llms.homer import HomerLLM
        >>> Settings.llm = HomerLLM()            # the embedded SmolLM2-135M-Instruct, loaded on first use
        >>> HomerLLM(model="/models/llama", device="cuda", dtype="bfloat16")

    The document inside a prompt is found by the rule in ``llama_index.llms.homer.document``
    (text between ``-----`` fences, as in every LlamaIndex QA template; else the paragraphs
    between a short first and last paragraph; else the whole longest message). Prompts that fit
    one HOMER chunk are run as they are (exactly the plain model).

    Private constructor arguments:
        engine: a built ``homer_llm.HomerModel`` to use instead of loading ``model`` (tests, custom
            models).
        document_cache: an object with ``get_or_compress(engine, parts, progress) ->
            (CompressedContext, hit: bool)`` (``homer_llm.doc_cache.DocumentCache``), so repeated
            questions over the same document reuse the compression where the cache allows.
    """

    model: str | None = Field(default=None, description="Local folder or hub id; None: the embedded default model.")
    device: str | None = Field(default=None, description="'cpu', 'cuda', 'cuda:N'; None: CUDA when available.")
    dtype: str | None = Field(default=None, description="'float32', 'bfloat16', 'float16'; None: auto.")
    attn_implementation: str | None = Field(default=None, description="'sdpa', 'eager', 'flash_attention_2'.")
    homer: HomerConfig | None = Field(default=None, description="HOMER hyperparameters (None: defaults).")
    context_window: int | None = Field(
        default=None, gt=0,
        description=f"Advertised context window in tokens (None: {DEFAULT_CONTEXT_WINDOW}, or the engine's "
        "tree capacity if smaller); never clamped to the model's native window.",
    )
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens generated per call (num_output).")
    temperature: float = Field(default=0.0, ge=0.0, description="0: greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = Field(default=None, description="Sampling seed (None: nondeterministic).")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation.")

    _engine: HomerModel | None = PrivateAttr(default=None)
    _document_cache: Any = PrivateAttr(default=None)

    def __init__(self, *, engine: HomerModel | None = None, document_cache: Any = None, **kwargs: Any) -> None:
        if engine is not None and not isinstance(engine, HomerModel):
            raise TypeError(f"engine must be a homer_llm.HomerModel, got {type(engine).__name__}")
        if document_cache is not None and not callable(getattr(document_cache, "get_or_compress", None)):
            raise TypeError(
                f"document_cache must have a get_or_compress(engine, parts, progress) method, "
                f"got {type(document_cache).__name__}"
            )
        super().__init__(**kwargs)
        self._engine = engine
        self._document_cache = document_cache

    @classmethod
    def class_name(cls) -> str:
        return "HomerLLM"

    # ------------------------------------------------------------------ engine and metadata
    @property
    def engine(self) -> HomerModel:
        """The HomerModel (loaded on first access through ``HomerModel.shared``)."""
        if self._engine is None:
            kwargs = self._load_kwargs()
            logger.info("loading HOMER engine for %s", self.model or DEFAULT_MODEL_NAME)
            self._engine = HomerModel.shared(self.model, **kwargs)
        return self._engine

    def _load_kwargs(self) -> dict[str, Any]:
        """The load settings; HomerModel.shared keys on the non-default ones, so equal settings
        share one engine with the LangChain adapter."""
        return {"device": self.device, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation or "sdpa", "homer": self.homer}

    @property
    def document_cache(self) -> Any:
        return self._document_cache

    @property
    def metadata(self) -> LLMMetadata:
        """Does not load the model: names and windows come from the settings until it is loaded."""
        engine = self._engine
        if self.context_window is not None:
            window = self.context_window
        elif engine is not None:
            window = min(DEFAULT_CONTEXT_WINDOW, tree_capacity(engine))
        else:
            window = DEFAULT_CONTEXT_WINDOW
        name = engine.name if engine is not None else (self.model or DEFAULT_MODEL_NAME)
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=str(name),
        )

    def tokenize(self, text: str) -> list[int]:
        """The model's own token ids for ``text`` (usable as ``PromptHelper(tokenizer=...)``)."""
        return list(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ prompt -> parts
    def _is_short(self, text: str) -> bool:
        return self.engine.count_tokens(text) <= self.engine.chunk_len // 4

    def _fits_one_chunk(self, parts: PromptParts) -> bool:
        try:
            plan = self.engine.plan(parts)
        except ValueError:
            return False
        return plan.num_leaves == 1 and plan.root.keep_ctx >= plan.context_len

    def _prepare_messages(self, rendered: list[dict[str, Any]]) -> _Prepared:
        """``rendered``: role/content dicts; the chat template renders them."""
        engine = self.engine
        plain = engine.prepare_chat(rendered)
        if self._fits_one_chunk(plain):
            return _Prepared(plain, None)
        longest = max(range(len(rendered)), key=lambda i: len(rendered[i]["content"]))
        split = split_document(rendered[longest]["content"], self._is_short)
        with_slot = list(rendered)
        with_slot[longest] = {**rendered[longest], "content": split.head + DOCUMENT_PLACEHOLDER + split.tail}
        logger.debug("document found by rule %r in message %d (%d chars)", split.rule, longest, len(split.document))
        return _Prepared(engine.prepare_chat(with_slot, split.document), split)

    def _prepare_text(self, text: str) -> _Prepared:
        """A raw (already formatted) prompt: no chat template."""
        tokenizer = self.engine.tokenizer
        plain = split_text(tokenizer, text, "", "")
        if self._fits_one_chunk(plain):
            return _Prepared(plain, None)
        split = split_document(text, self._is_short)
        return _Prepared(split_text(tokenizer, split.head, split.document, split.tail), split)

    def _prepare_completion(self, prompt: str, formatted: bool) -> _Prepared:
        _check_prompt(prompt)
        if not formatted and self.completion_to_prompt is not None and not _is_default_completion(self):
            return self._prepare_text(self.completion_to_prompt(prompt))
        if formatted or not getattr(self.engine.tokenizer, "chat_template", None):
            return self._prepare_text(prompt)
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self._prepare_messages(messages)

    def _prepare_chat(self, messages: Sequence[ChatMessage]) -> _Prepared:
        if not messages:
            raise ValueError("messages is empty: nothing to answer")
        rendered = _to_dicts(messages)
        if all(not m["content"].strip() for m in rendered):
            raise ValueError("every message is empty: nothing to answer")
        if self.messages_to_prompt is not generic_messages_to_prompt and self.messages_to_prompt is not None:
            return self._prepare_text(self.messages_to_prompt(messages))
        return self._prepare_messages(rendered)

    def _generation_config(self, kwargs: dict[str, Any]) -> GenerationConfig:
        max_new = kwargs.pop("max_new_tokens", None) or kwargs.pop("max_tokens", None) or self.max_new_tokens
        stop = list(self.stop)
        extra_stop = kwargs.pop("stop", None)
        if isinstance(extra_stop, str):
            stop.append(extra_stop)
        elif extra_stop:
            stop.extend(extra_stop)
        config = GenerationConfig(
            max_new_tokens=max_new,
            temperature=kwargs.pop("temperature", self.temperature),
            top_p=kwargs.pop("top_p", self.top_p),
            top_k=kwargs.pop("top_k", self.top_k),
            seed=kwargs.pop("seed", self.seed),
            stop=tuple(stop),
        )
        if kwargs:
            logger.debug("HomerLLM ignores keyword arguments %s", sorted(kwargs))
        return config

    # ------------------------------------------------------------------ running
    def _compress(self, prepared: _Prepared):
        """-> (CompressedContext, cache_hit). Documents go through the document cache if one is set."""
        engine = self.engine
        if self._document_cache is not None and prepared.parts.context:
            context, hit = self._document_cache.get_or_compress(engine, prepared.parts, None)
            return context, bool(hit)
        return engine.compress(prepared.parts), False

    def _validate(self, prepared: _Prepared) -> None:
        """Raise the engine's ValueError now (not at the first streamed delta) if it cannot fit."""
        try:
            self.engine.plan(prepared.parts)
        except ValueError as err:
            rule = prepared.split.rule if prepared.split is not None else "none (prompt used as is)"
            raise ValueError(f"{err} (document rule: {rule})") from err

    def _run(self, prepared: _Prepared, config: GenerationConfig) -> tuple[str, dict[str, Any]]:
        self._validate(prepared)
        context, hit = self._compress(prepared)
        result = self.engine.generate(context, config)
        return result.text, _raw(context, len(result.token_ids), result.finish_reason, hit, prepared,
                                 compress_seconds=context.stats.seconds, generate_seconds=result.seconds)

    def _run_stream(self, prepared: _Prepared, config: GenerationConfig) -> Iterator[tuple[str, dict | None]]:
        """Yield (delta, None) ... and finally ("", raw) once the stream is done."""
        context, hit = self._compress(prepared)
        stream = self.engine.stream(context, config)
        deltas = iter(stream)
        try:
            for delta in deltas:
                if delta:
                    yield delta, None
        finally:
            deltas.close()  # releases the model lock at once if the consumer stops early
        result = stream.result
        assert result is not None
        yield "", _raw(context, len(result.token_ids), result.finish_reason, hit, prepared,
                       compress_seconds=context.stats.seconds, generate_seconds=result.seconds)

    def _completion_stream(self, prepared: _Prepared, config: GenerationConfig) -> Iterator[CompletionResponse]:
        text = ""
        pending: str | None = None
        for delta, raw in self._run_stream(prepared, config):
            if raw is None:
                if pending is not None:
                    yield CompletionResponse(text=text, delta=pending)
                text += delta
                pending = delta
            else:
                # the last delta carries the usage and HOMER statistics
                yield CompletionResponse(text=text, delta=pending or "", raw=raw, additional_kwargs=raw["homer"])

    @staticmethod
    def _chat_stream(completions: Iterator[CompletionResponse]) -> Iterator[ChatResponse]:
        for item in completions:
            yield ChatResponse(
                message=ChatMessage(role=MessageRole.ASSISTANT, content=item.text),
                delta=item.delta, raw=item.raw, additional_kwargs=item.additional_kwargs,
            )

    # ------------------------------------------------------------------ LlamaIndex API (sync)
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        config = self._generation_config(dict(kwargs))
        text, raw = self._run(self._prepare_completion(prompt, formatted), config)
        return CompletionResponse(text=text, raw=raw, additional_kwargs=raw["homer"])

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        config = self._generation_config(dict(kwargs))
        prepared = self._prepare_completion(prompt, formatted)
        self._validate(prepared)
        return self._completion_stream(prepared, config)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        config = self._generation_config(dict(kwargs))
        text, raw = self._run(self._prepare_chat(messages), config)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), raw=raw,
                            additional_kwargs=raw["homer"])

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        config = self._generation_config(dict(kwargs))
        prepared = self._prepare_chat(messages)
        self._validate(prepared)
        return self._chat_stream(self._completion_stream(prepared, config))

    # ------------------------------------------------------------------ LlamaIndex API (async)
    # Prompt preparation (tokenization) and the engine both run in worker threads: the event loop
    # is never blocked by torch or by the tokenizer.
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        config = self._generation_config(dict(kwargs))

        def work() -> CompletionResponse:
            text, raw = self._run(self._prepare_completion(prompt, formatted), config)
            return CompletionResponse(text=text, raw=raw, additional_kwargs=raw["homer"])

        return await asyncio.to_thread(work)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        config = self._generation_config(dict(kwargs))

        def prepare() -> _Prepared:
            prepared = self._prepare_completion(prompt, formatted)
            self._validate(prepared)
            return prepared

        prepared = await asyncio.to_thread(prepare)
        return iterate_in_thread(lambda: self._completion_stream(prepared, config))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        config = self._generation_config(dict(kwargs))

        def work() -> ChatResponse:
            text, raw = self._run(self._prepare_chat(messages), config)
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), raw=raw,
                                additional_kwargs=raw["homer"])

        return await asyncio.to_thread(work)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        config = self._generation_config(dict(kwargs))

        def prepare() -> _Prepared:
            prepared = self._prepare_chat(messages)
            self._validate(prepared)
            return prepared

        prepared = await asyncio.to_thread(prepare)
        return iterate_in_thread(lambda: self._chat_stream(self._completion_stream(prepared, config)))


# ---------------------------------------------------------------------- helpers
def _check_prompt(prompt: Any) -> None:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty")


def _is_default_completion(llm: HomerLLM) -> bool:
    return llm.completion_to_prompt is default_completion_to_prompt


def _to_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        if not isinstance(message, ChatMessage):
            raise TypeError(f"messages must be llama_index ChatMessage objects, got {type(message).__name__}")
        out.append({"role": _ROLES.get(message.role, str(message.role.value)), "content": message.content or ""})
    return out


def _raw(context, output_tokens: int, finish_reason: str, hit: bool, prepared: _Prepared, *,
         compress_seconds: float, generate_seconds: float) -> dict[str, Any]:
    """Response ``raw``: OpenAI-style ``usage`` (read by TokenCountingHandler) and HOMER statistics."""
    stats = context.stats
    homer = {
        "input_tokens": stats.input_tokens,
        "cache_tokens": stats.cache_tokens,
        "output_tokens": output_tokens,
        "finish_reason": finish_reason,
        "tree_height": stats.tree_height,
        "num_leaves": stats.num_leaves,
        "peak_kv_bytes": stats.peak_kv_bytes,
        "compress_seconds": compress_seconds,
        "generate_seconds": generate_seconds,
        "cache_hit": hit,
        **prepared.info(),
    }
    usage = {"prompt_tokens": stats.input_tokens, "completion_tokens": output_tokens,
             "total_tokens": stats.input_tokens + output_tokens}
    return {"usage": usage, "homer": homer}
