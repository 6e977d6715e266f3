"""``HomerLLM``: a LlamaIndex function-calling LLM that puts whole long documents into a local model's context.

The engine is ``homer_llm.HomerModel`` (HOMER hierarchical context merging); this adapter only
turns LlamaIndex prompts, messages and tools into HOMER's prefix / document / suffix, and results
back into LlamaIndex responses, tool calls included. The model loads lazily, on the first call,
through the process-wide ``HomerModel.shared`` (the LangChain adapter gets the same instance for
the same settings; both adapters take the HOMER settings under the same names).

Tools: ``chat(messages, tools=[...])`` (what ``chat_with_tools``, ``predict_and_call``,
``FunctionAgent`` and ``FunctionCallingProgram`` send) renders the tools with the model's chat
template (``tools=`` of ``apply_chat_template``) when the template knows them, else describes them
in a system message; the reply is parsed by ``homer_llm.tool_calls`` (shared with the LangChain
adapter) into ``ToolCallBlock`` blocks of the assistant message (and, OpenAI-shaped, into its
``additional_kwargs["tool_calls"]``, which LlamaIndex's streaming structured output reads). A required call
(``tool_required=True`` or a named ``tool_choice``) pre-writes the start of the call in the
model's own format, so even a small model only has to write the arguments.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

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
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection, default_completion_to_prompt
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.types import Model, PydanticProgramMode

from homer_llm import DOCUMENT_PLACEHOLDER, GenerationConfig, HomerConfig, HomerModel, PromptParts, split_text
from homer_llm.model import local_tokenizer
from homer_llm.tool_calls import (
    PROSE_INSTRUCTION,
    ToolFormat,
    ToolSpec,
    add_system,
    ask_again_reason,
    call_key,
    call_opening_tokens,
    coerce_calls,
    detect_tool_format,
    first_argument,
    forced_prefill,
    forced_stop,
    json_instruction,
    marker_start,
    new_call_id,
    normalize_tool_choice,
    object_opening,
    parse_tool_calls,
    tool_instructions,
)

from ._messages import message_tool_calls, to_chat_dicts
from ._structured import parse_structured, trim_json, unescape_json_lines
from ._threads import iterate_in_thread
from .document import DocumentSplit, split_document

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)

DEFAULT_CONTEXT_WINDOW = 2**20
"""Advertised context window (tokens) when none is configured: 1M, far below what the default
model's tree can take (chunk 4096 x 2**29 leaves) and above any document a CPU can compress in
reasonable time. An injected engine advertises ``min(this, its tree capacity)``."""

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_TOOL_KWARGS = ("tools", "tool_choice", "tool_required")


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
class _Tools:
    """The tools of one call: what was bound, how the model writes calls, the pre-written start."""

    spec: ToolSpec
    fmt: ToolFormat
    prefill: str = ""


@dataclass(frozen=True)
class _Prepared:
    """A prompt ready for the engine: its parts, how the document was found, the call's tools."""

    parts: PromptParts
    split: DocumentSplit | None
    tools: _Tools | None = None
    answer_prefill: str = ""  # the pre-written start of a JSON answer (response_format)

    def info(self) -> dict[str, Any]:
        return {
            "document_tokens": len(self.parts.context),
            "document_rule": self.split.rule if self.split is not None else None,
        }


class HomerLLM(FunctionCallingLLM):
    """A local Hugging Face model with HOMER: whole documents in one call, far past the native window.

    Examples:
        ```python
        from llama_index.core import Settings
        from llama_index.core.agent.workflow import FunctionAgent
        from llama_index.llms.homer import HomerLLM, HomerQueryEngine

        Settings.llm = HomerLLM()  # the embedded SmolLM2-135M-Instruct, loaded on first use

        # a tool-calling model (hermes-style chat template), whole reports in one call
        llm = HomerLLM(model="/models/Qwen2.5-Coder-1.5B-Instruct", dtype="float32", chunk_len=4096)
        engine = HomerQueryEngine.from_documents(documents, llm=llm)
        agent = FunctionAgent(tools=[...], llm=llm)
        ```

    The document inside a prompt is found by the rule in ``llama_index.llms.homer.document``
    (text between ``-----`` fences, as in every LlamaIndex QA template; else the paragraphs
    between a short first and last paragraph; else the whole longest message). Prompts that fit
    one HOMER chunk are run as they are (exactly the plain model).

    The HOMER settings (``chunk_len``, ``cache_len``, ``warmup_layers``, ``pruning``,
    ``prune_unit``, ``reread_suffix``, ``rope_scaling``, ``rope_factor``, ``focus_leaves``,
    ``focus_margin``, ``focus_locator``, ``focus_keep_document``, ``merge_attention``), ``model``, ``device``, ``dtype``,
    ``attn_implementation``, ``edge_tokens`` and ``document_cache`` have the names and meanings
    of the LangChain adapter's (``langchain_homer.HomerLLM``); equal settings share one engine.

    Private constructor argument:
        engine: a built ``homer_llm.HomerModel`` to use instead of loading ``model`` (tests, custom
            models); its own HOMER settings then apply.
    """

    model: str | None = Field(default=None, description="Local folder or hub id; None: the embedded default model.")
    device: str | None = Field(default=None, description="'cpu', 'cuda', 'cuda:N'; None: CUDA when available.")
    dtype: str | None = Field(
        default=None, description="'float32', 'bfloat16', 'float16' or None/'auto' (bf16 on CUDA, fp32 on CPU).",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa", description="Attention backend of the model.",
    )
    chunk_len: int | None = Field(
        default=None, ge=8, description="HOMER chunk length M, the longest sequence any forward pass sees "
        "(None: half the model window).",
    )
    cache_len: int | None = Field(
        default=None, ge=2, description="Length T of the final cache, at most chunk_len (None: chunk_len).",
    )
    warmup_layers: int | None = Field(
        default=None, ge=0, description="Layers run per leaf before any merging (None: 12/32 of the layers).",
    )
    pruning: Literal["calibrated", "uncalibrated", "random"] = Field(
        default="calibrated", description="Token pruning: bias-corrected significance (the method), raw "
        "significance, or random (the paper's ablation).",
    )
    prune_unit: Literal["token", "word"] = Field(
        default="token", description="'word': whole words and numbers are kept or dropped together.",
    )
    reread_suffix: bool = Field(
        default=True, description="Run the question again after the merged cache (False: answer from the "
        "tree's averaged question states, as published).",
    )
    rope_scaling: Literal["yarn", "linear"] | None = Field(
        default=None, description="HOMER on a RoPE-scaled view of the model with rope_factor times longer "
        "chunks (the paper's HOMER + YaRN); None: off.",
    )
    rope_factor: float = Field(default=2.0, description="The RoPE scaling factor (> 1) when rope_scaling is set.")
    focus_leaves: int = Field(
        default=3, ge=0, description="k > 0: up to k leaves the question attends to most, best first (a second or "
        "later one only while they take at most half the window), are read in full after the compressed document (focus_keep_document, the default: the "
        "hybrid read) or alone; 0: the compressed cache alone answers. Default 3: one is read on an 8k window (the "
        "default model), more on larger windows, so a fact the locator ranks second is still read.",
    )
    focus_margin: int = Field(
        default=256, ge=0, description="With focus: tokens of neighbouring text also read on each side of a "
        "chosen leaf.",
    )
    focus_locator: Literal["tree", "leaf", "lexical"] = Field(
        default="leaf", description="With focus: rank leaves inside each leaf's own pass ('leaf') or by the "
        "question's attention after the whole tree ('tree') or by BM25 of the question's tokens in each leaf, "
        "no model pass ('lexical').",
    )
    focus_keep_document: bool = Field(
        default=True, description="With focus: True (default) reads the chosen leaves in full after HOMER's "
        "compressed cache of the whole document (the hybrid read); False: the chosen leaves alone.",
    )
    merge_attention: Literal["auto", "causal", "own-leaf"] = Field(
        default="auto", description="Attention in merged nodes: 'causal' (as published), 'own-leaf' (a document "
        "token reads only its own leaf), 'auto' (own-leaf without focus on sdpa/eager, else causal).",
    )
    repeated_calls: Literal["answer", "allow"] = Field(
        default="answer", description="With tools bound and the choice left to the model, after tool results: "
        "'answer' asks once more, with the tools hidden and an instruction to answer from the results, when the "
        "reply only repeats calls already made since the user's last message or is empty; 'allow' returns such "
        "replies as they are. The same as the LangChain adapter's field.",
    )
    edge_tokens: int | None = Field(
        default=None, ge=0, description="Token budget of the instruction before and the question after an "
        "auto-detected document (None: a quarter of the chunk).",
    )
    document_cache: Any = Field(
        default=None, exclude=True, description="An object with get_or_compress(engine, parts, progress) -> "
        "(CompressedContext, hit), e.g. homer_llm.doc_cache.DocumentCache, used whenever a document is compressed.",
    )
    function_calling: bool | None = Field(
        default=None, description="Advertise the model as function-calling (None: when its chat template renders "
        "tools, as the hermes / llama3 / mistral families do).",
    )
    context_window: int | None = Field(
        default=None, gt=0,
        description=f"Advertised context window in tokens (None: {DEFAULT_CONTEXT_WINDOW}, or the engine's "
        "tree capacity if smaller); never clamped to the model's native window.",
    )
    max_new_tokens: int = Field(default=256, gt=0, description="Most tokens generated per call (num_output).")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0: greedy decoding.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1: off).")
    top_k: int = Field(default=0, ge=0, description="Sample from the k likeliest tokens (0: off).")
    seed: int | None = Field(default=None, description="Sampling seed (None: nondeterministic).")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation.")

    _engine: HomerModel | None = PrivateAttr(default=None)
    _function_calling: bool | None = PrivateAttr(default=None)

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    def __init__(self, *, engine: HomerModel | None = None, **kwargs: Any) -> None:
        if engine is not None and not isinstance(engine, HomerModel):
            raise TypeError(f"engine must be a homer_llm.HomerModel, got {type(engine).__name__}")
        if "homer" in kwargs:
            raise TypeError("HomerLLM takes the HOMER settings as fields (chunk_len=..., focus_leaves=..., ...), "
                            "as the LangChain adapter does, not homer=HomerConfig(...); or pass engine=HomerModel(...)")
        super().__init__(**kwargs)
        self._engine = engine

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES} or None, got {value!r}")
        return value

    @field_validator("document_cache")
    @classmethod
    def _check_cache(cls, value: Any) -> Any:
        if value is not None and not callable(getattr(value, "get_or_compress", None)):
            raise TypeError(
                f"document_cache must have a get_or_compress(engine, parts, progress) method, "
                f"got {type(value).__name__}"
            )
        return value

    @model_validator(mode="after")
    def _check_homer(self) -> HomerLLM:
        self.homer_config()  # raises ValueError on an invalid combination
        return self

    @classmethod
    def class_name(cls) -> str:
        return "HomerLLM"

    def homer_config(self) -> HomerConfig:
        """The HomerConfig these settings describe (an injected engine keeps its own)."""
        return HomerConfig(chunk_len=self.chunk_len, cache_len=self.cache_len, warmup_layers=self.warmup_layers,
                           pruning=self.pruning, prune_unit=self.prune_unit, reread_suffix=self.reread_suffix,
                           rope_scaling=self.rope_scaling, rope_factor=self.rope_factor,
                           focus_leaves=self.focus_leaves, focus_margin=self.focus_margin,
                           focus_locator=self.focus_locator, focus_keep_document=self.focus_keep_document,
                           merge_attention=self.merge_attention)

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
                "attn_implementation": self.attn_implementation, "homer": self.homer_config()}

    def _tokenizer(self) -> Any:
        """The engine's tokenizer if it is loaded, else the model's tokenizer alone (no weights)."""
        if self._engine is not None:
            return self._engine.tokenizer
        return local_tokenizer(self.model)

    def tool_format(self) -> ToolFormat:
        """How the model's chat template handles tools (``homer_llm.tool_calls.detect_tool_format``)."""
        return detect_tool_format(self._tokenizer())

    def _is_function_calling(self) -> bool:
        if self.function_calling is not None:
            return self.function_calling
        if self._function_calling is None:
            try:
                self._function_calling = self.tool_format().native
            except ValueError as err:  # metadata must not fail: the call itself will say what is wrong
                logger.warning("cannot read the chat template of %s (%s): not advertised as function-calling",
                               self.model or DEFAULT_MODEL_NAME, err)
                return False
        return self._function_calling

    @property
    def metadata(self) -> LLMMetadata:
        """Does not load the model (at most its tokenizer, to read the chat template once)."""
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
            is_function_calling_model=self._is_function_calling(),
            model_name=str(name),
        )

    def tokenize(self, text: str) -> list[int]:
        """The model's own token ids for ``text`` (usable as ``PromptHelper(tokenizer=...)``)."""
        return list(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ prompt -> parts
    def _edge_budget(self) -> int:
        return self.edge_tokens if self.edge_tokens is not None else self.engine.chunk_len // 4

    def _is_short(self, text: str) -> bool:
        return self.engine.count_tokens(text) <= self._edge_budget()

    def _fits_one_chunk(self, parts: PromptParts) -> bool:
        try:
            plan = self.engine.plan(parts)
        except ValueError:
            return False
        return plan.num_leaves == 1 and plan.root.keep_ctx >= plan.context_len

    def _prepare_messages(self, rendered: list[dict[str, Any]], *, system: str | None = None,
                          tools: list[dict[str, Any]] | None = None, prefill: str = "") -> _Prepared:
        """``rendered``: role/content dicts; the chat template renders them (with ``tools``).

        ``system`` (tool instructions) is added after the document search, so it is never taken
        for the document; ``prefill`` (the pre-written start of the answer) ends the suffix.
        """
        engine = self.engine
        tail = tuple(engine.tokenizer(prefill, add_special_tokens=False)["input_ids"]) if prefill else ()

        def render(dicts: list[dict[str, Any]], document: str | None = None) -> PromptParts:
            parts = engine.prepare_chat(add_system(dicts, system), document, tools=tools)
            return PromptParts(parts.prefix, parts.context, parts.suffix + tail) if tail else parts

        plain = render(rendered)
        if self._fits_one_chunk(plain):
            return _Prepared(plain, None)
        longest = max(range(len(rendered)), key=lambda i: len(rendered[i]["content"]))
        split = split_document(rendered[longest]["content"], self._is_short)
        with_slot = list(rendered)
        with_slot[longest] = {**rendered[longest], "content": split.head + DOCUMENT_PLACEHOLDER + split.tail}
        logger.debug("document found by rule %r in message %d (%d chars)", split.rule, longest, len(split.document))
        return _Prepared(render(with_slot, split.document), split)

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
        prompt = unescape_json_lines(prompt)
        if not formatted and self.completion_to_prompt is not None and not _is_default_completion(self):
            return self._prepare_text(self.completion_to_prompt(prompt))
        if formatted or not getattr(self.engine.tokenizer, "chat_template", None):
            return self._prepare_text(prompt)
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self._prepare_messages(messages)

    def _prepare_chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> _Prepared:
        """Messages (and the tool arguments popped from ``kwargs``) -> prompt parts."""
        if not messages:
            raise ValueError("messages is empty: nothing to answer")
        in_prose = kwargs.pop("_in_prose", False)
        tools = _tool_spec(kwargs.pop("tools", None), kwargs.pop("tool_choice", None),
                           bool(kwargs.pop("tool_required", False)))
        json_schema = _response_schema(kwargs.pop("response_format", None))
        fmt = detect_tool_format(self.engine.tokenizer)
        rendered = [{**m, "content": unescape_json_lines(m["content"])} for m in to_chat_dicts(messages, fmt)]
        if all(not m["content"].strip() and not m.get("tool_calls") for m in rendered):
            raise ValueError("every message is empty: nothing to answer")
        plan = None
        if tools is not None and tools.active:
            plan = _Tools(tools, fmt, forced_prefill(fmt, tools) if tools.forced else "")
        system = tool_instructions(fmt, tools)
        if in_prose:
            system = "\n\n".join(t for t in (system, PROSE_INSTRUCTION) if t)
        answer_prefill = ""
        if json_schema is not None and plan is None:
            system = "\n\n".join(t for t in (system, json_instruction(json_schema or None)) if t)
            answer_prefill = object_opening(json_schema) if first_argument(json_schema) else "{"
        if self.messages_to_prompt is not generic_messages_to_prompt and self.messages_to_prompt is not None:
            if system:
                messages = [ChatMessage(role=MessageRole.SYSTEM, content=system), *messages]
            prefill = plan.prefill if plan else answer_prefill
            return replace(self._prepare_text(self.messages_to_prompt(messages) + prefill), tools=plan,
                           answer_prefill=answer_prefill)
        native = list(tools.tools) if plan is not None and fmt.native else None
        prefill = plan.prefill if plan else answer_prefill
        prepared = self._prepare_messages(rendered, system=system, tools=native, prefill=prefill)
        return replace(prepared, tools=plan, answer_prefill=answer_prefill)

    def _generation_config(self, kwargs: dict[str, Any], prepared: _Prepared | None = None) -> GenerationConfig:
        max_new = kwargs.pop("max_new_tokens", None) or kwargs.pop("max_tokens", None) or self.max_new_tokens
        stop = list(self.stop)
        extra_stop = kwargs.pop("stop", None)
        if isinstance(extra_stop, str):
            stop.append(extra_stop)
        elif extra_stop:
            stop.extend(extra_stop)
        if prepared is not None and prepared.tools is not None and prepared.tools.spec.forced:
            stop.extend(forced_stop(prepared.tools.fmt))  # a forced call ends at its closing tag
        config = GenerationConfig(
            max_new_tokens=max_new,
            temperature=kwargs.pop("temperature", self.temperature),
            top_p=kwargs.pop("top_p", self.top_p),
            top_k=kwargs.pop("top_k", self.top_k),
            seed=kwargs.pop("seed", self.seed),
            stop=tuple(dict.fromkeys(stop)),
        )
        kwargs.pop("allow_parallel_tool_calls", None)
        if kwargs:
            logger.debug("HomerLLM ignores keyword arguments %s", sorted(kwargs))
        return config

    # ------------------------------------------------------------------ running
    def _compress(self, prepared: _Prepared):
        """-> (CompressedContext, cache_hit). Documents go through the document cache if one is set."""
        engine = self.engine
        if self.document_cache is not None and prepared.parts.context:
            context, hit = self.document_cache.get_or_compress(engine, prepared.parts, None)
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

    def _chat_stream(self, prepared: _Prepared, config: GenerationConfig) -> Iterator[ChatResponse]:
        """Chat deltas; with tools, text that may be a tool call is held back until the end, where
        the last response carries the parsed calls (and the statistics)."""
        if prepared.tools is None:
            head = prepared.answer_prefill
            for i, item in enumerate(self._completion_stream(prepared, config)):
                yield ChatResponse(
                    message=ChatMessage(role=MessageRole.ASSISTANT, content=head + item.text),
                    delta=(head if i == 0 else "") + (item.delta or ""), raw=item.raw,
                    additional_kwargs=item.additional_kwargs,
                )
            return
        text = prepared.tools.prefill
        shown = 0
        for delta, raw in self._run_stream(prepared, config):
            if raw is None:
                text += delta
                start, _ = marker_start(text, at_start_json=True)
                visible = len(text) if start is None else start
                if visible > shown:
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text[:visible]),
                                       delta=text[shown:visible])
                    shown = visible
                continue
            message = _tool_message(prepared.tools, text)
            content = message.content or ""
            rest = content[shown:] if content.startswith(text[:shown]) else ""
            raw = {**raw, "text": text}
            yield ChatResponse(message=message, delta=rest, raw=raw, additional_kwargs=raw["homer"])

    def _chat_response(self, prepared: _Prepared, text: str, raw: dict[str, Any]) -> ChatResponse:
        if prepared.tools is None:
            if prepared.answer_prefill:
                text = trim_json(prepared.answer_prefill + text)
            message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
        else:
            text = prepared.tools.prefill + text
            message = _tool_message(prepared.tools, text)
            raw = {**raw, "text": text}
        return ChatResponse(message=message, raw=raw, additional_kwargs=raw["homer"])

    def _chat_now(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        original = dict(kwargs)
        prepared = self._prepare_chat(messages, kwargs)
        config = self._generation_config(kwargs, prepared)
        text, raw = self._run(prepared, config)
        response = self._chat_response(prepared, text, raw)
        return self._ask_again(messages, original, prepared, response) or response

    def _chat_stream_ready(self, messages: Sequence[ChatMessage],
                           kwargs: dict[str, Any]) -> tuple[_Prepared, GenerationConfig]:
        prepared = self._prepare_chat(messages, kwargs)
        config = self._generation_config(kwargs, prepared)
        self._validate(prepared)
        return prepared, config

    def _guarded_stream(self, messages: Sequence[ChatMessage], original: dict[str, Any], prepared: _Prepared,
                        config: GenerationConfig) -> Iterator[ChatResponse]:
        """:meth:`_chat_stream`, its last response replaced by :meth:`_ask_again`'s where that applies
        (a reply that opens with a call is held back whole, so nothing of it was shown)."""
        for response in self._chat_stream(prepared, config):
            if response.raw is not None and prepared.tools is not None:
                again = self._ask_again(messages, original, prepared, response)
                if again is not None:
                    yield ChatResponse(message=again.message, delta=again.message.content or "", raw=again.raw,
                                       additional_kwargs=again.additional_kwargs)
                    continue
            yield response

    def _ask_again(self, messages: Sequence[ChatMessage], original: dict[str, Any], prepared: _Prepared,
                   response: ChatResponse) -> ChatResponse | None:
        """The reply asked again in prose (``repeated_calls``), or None when ``response`` stands.

        Only with tools bound and the choice left to the model, after tool results: a reply that
        only repeats calls made since the user's last message, or an empty one
        (``tool_calls.ask_again_reason``), is replaced by the answer to the same messages with the
        tools hidden, ``tool_calls.PROSE_INSTRUCTION`` added to the system message and the tokens
        that open a call suppressed. Both replies' tokens count in the usage.
        """
        tools = prepared.tools
        if self.repeated_calls != "answer" or tools is None or tools.spec.forced or tools.prefill:
            return None
        text = (response.raw or {}).get("text", "")
        calls = [{"name": c["name"], "args": c["args"]} for c in message_tool_calls(response.message)]
        why = ask_again_reason(text, calls, _calls_since_last_user(messages))
        if why is None:
            return None
        logger.info("%s after tool results: asked again with the tools hidden", why)
        kwargs = {**original, "tool_choice": "none", "tool_required": False, "_in_prose": True}
        again = self._prepare_chat(messages, kwargs)
        config = self._generation_config(kwargs, again)
        banned = call_opening_tokens(self.engine.tokenizer)
        config = replace(config, suppress_tokens=tuple(dict.fromkeys(config.suppress_tokens + banned)))
        text2, raw = self._run(again, config)
        first = response.raw or {}
        raw["homer"]["asked_again"] = why
        usage = raw.get("usage")
        if isinstance(usage, dict) and isinstance(first.get("usage"), dict):
            raw["usage"] = {k: usage.get(k, 0) + first["usage"].get(k, 0) for k in usage}
        return self._chat_response(again, text2, raw)

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
        """Chat; ``tools=`` (OpenAI-format dicts or LlamaIndex tools), ``tool_choice=`` and
        ``tool_required=`` make it a tool call (see the module docstring)."""
        return self._chat_now(messages, dict(kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        prepared, config = self._chat_stream_ready(messages, dict(kwargs))
        return self._guarded_stream(messages, dict(kwargs), prepared, config)

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
        return await asyncio.to_thread(self._chat_now, messages, dict(kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        prepared, config = await asyncio.to_thread(self._chat_stream_ready, messages, dict(kwargs))
        return iterate_in_thread(lambda: self._guarded_stream(messages, dict(kwargs), prepared, config))

    # ------------------------------------------------------------------ structured output
    # Function-calling models: LlamaIndex's FunctionCallingProgram (a forced tool call). Other
    # models: one JSON answer, asked for with the fields listed (not the schema, which small models
    # copy) and its opening pre-written, then validated here.
    def _json_structured(self) -> bool:
        return self.pydantic_program_mode == PydanticProgramMode.DEFAULT and not self._is_function_calling()

    def _structured_call(self, output_cls: type[Model], prompt: BasePromptTemplate,
                         prompt_args: dict[str, Any]) -> tuple[list[ChatMessage], dict[str, Any]]:
        messages = self._extend_messages(prompt.format_messages(llm=self, **prompt_args))
        return messages, {"type": "json_schema", "schema": output_cls.model_json_schema()}

    @dispatcher.span
    def structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                           llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        """``output_cls`` from the model's answer to ``prompt`` (see the section comment).

        Raises:
            ValueError: the answer is not JSON, copies the schema, or does not validate.
        """
        if not self._json_structured():
            return super().structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        dispatcher.event(LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt,
                                                        template_args=prompt_args))
        messages, response_format = self._structured_call(output_cls, prompt, prompt_args)
        response = self.chat(messages, response_format=response_format, **(llm_kwargs or {}))
        result = parse_structured(output_cls, response.message.content or "")
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    async def astructured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        if not self._json_structured():
            return await super().astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)
        dispatcher.event(LLMStructuredPredictStartEvent(output_cls=output_cls, template=prompt,
                                                        template_args=prompt_args))
        messages, response_format = self._structured_call(output_cls, prompt, prompt_args)
        response = await self.achat(messages, response_format=response_format, **(llm_kwargs or {}))
        result = parse_structured(output_cls, response.message.content or "")
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    def stream_structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Any:
        """Without function calling: one item, the validated object (JSON is validated whole)."""
        if not self._json_structured():
            return super().stream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

        def one() -> Iterator[Model]:
            yield self.structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

        return one()

    async def astream_structured_predict(self, output_cls: type[Model], prompt: PromptTemplate,
                                         llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Any:
        if not self._json_structured():
            return await super().astream_structured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

        async def one() -> AsyncIterator[Model]:
            yield await self.astructured_predict(output_cls, prompt, llm_kwargs, **prompt_args)

        return one()

    # ------------------------------------------------------------------ FunctionCallingLLM
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The ``chat`` arguments for a call with ``tools``: the messages, the tools as OpenAI dicts,
        and the choice (``tool_required`` = some tool must be called; ``tool_choice`` a tool name,
        "auto", "none" or "required")."""
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        return {
            "messages": messages,
            "tools": [_openai_tool(t) for t in tools] or None,
            "tool_choice": tool_choice,
            "tool_required": tool_required,
            **kwargs,
        }

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[BaseTool], allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Without parallel calls, only the first tool call of the reply is kept."""
        if allow_parallel_tool_calls:
            return response
        message = response.message
        calls = [i for i, b in enumerate(message.blocks) if isinstance(b, ToolCallBlock)]
        if len(calls) > 1:
            message.blocks = [b for i, b in enumerate(message.blocks) if i not in calls[1:]]
            if isinstance(message.additional_kwargs.get("tool_calls"), list):
                message.additional_kwargs["tool_calls"] = message.additional_kwargs["tool_calls"][:1]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any,
    ) -> list[ToolSelection]:
        """The tool calls of ``response`` as ToolSelection objects.

        Raises:
            ValueError: no tool call and ``error_on_no_tool_call`` (names what the model wrote,
                and why calls it wrote could not be read).
        """
        calls = message_tool_calls(response.message)
        if not calls and error_on_no_tool_call:
            invalid = response.message.additional_kwargs.get("invalid_tool_calls") or []
            why = "; unreadable calls: " + "; ".join(str(c.get("error")) for c in invalid) if invalid else ""
            raise ValueError(f"expected at least one tool call, got none; the model answered "
                             f"{(response.message.content or '')[:300]!r}{why}")
        return [ToolSelection(tool_id=c["id"] or new_call_id(), tool_name=c["name"], tool_kwargs=c["args"])
                for c in calls]


# ---------------------------------------------------------------------- helpers
def _check_prompt(prompt: Any) -> None:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty")


def _is_default_completion(llm: HomerLLM) -> bool:
    return llm.completion_to_prompt is default_completion_to_prompt


def _openai_tool(tool: Any) -> dict[str, Any]:
    """A LlamaIndex tool (or an OpenAI-format dict) as an OpenAI-format tool dict.

    Raises:
        TypeError: neither a tool with ``metadata`` nor a ``{"type": "function", ...}`` dict.
    """
    if isinstance(tool, dict):
        if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            return tool
        raise TypeError(f"a tool dict must be {{'type': 'function', 'function': {{...}}}}, got {tool!r}")
    metadata = getattr(tool, "metadata", None)
    if metadata is None or not callable(getattr(metadata, "to_openai_tool", None)):
        raise TypeError(f"tools must be LlamaIndex tools or OpenAI tool dicts, got {type(tool).__name__}")
    return metadata.to_openai_tool(skip_length_check=True)


def _calls_since_last_user(messages: Sequence[ChatMessage]) -> frozenset[str]:
    """``tool_calls.call_key`` of the assistant's tool calls since the last user message."""
    seen: set[str] = set()
    for message in reversed(messages):
        if message.role == MessageRole.USER:
            break
        if message.role == MessageRole.ASSISTANT:
            seen.update(call_key(c["name"], c.get("args")) for c in message_tool_calls(message))
    return frozenset(seen)


def _tool_spec(tools: Sequence[Any] | None, tool_choice: Any, tool_required: bool) -> ToolSpec | None:
    """The call's ToolSpec (None without tools).

    Raises:
        ValueError: a choice that needs tools without any, or an unknown tool name.
    """
    if not tools:
        if tool_required or tool_choice not in (None, "auto", "none"):
            raise ValueError(f"tool_required / tool_choice={tool_choice!r} needs at least one tool, got none")
        return None
    formatted = tuple(_openai_tool(t) for t in tools)
    choice = normalize_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])
    if tool_required and choice in (None, "auto"):
        choice = "any"
    return ToolSpec(formatted, choice)


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    """The schema of a ``response_format`` ({} for a plain JSON object; None without one).

    Raises:
        ValueError: not ``{"type": "json_schema", "schema": {...}}`` or ``{"type": "json_object"}``.
    """
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return {}
    if kind == "json_schema" and isinstance(response_format.get("schema"), dict):
        return response_format["schema"]
    raise ValueError("response_format must be {'type': 'json_schema', 'schema': {...}} or "
                     f"{{'type': 'json_object'}}, got {response_format!r}")


def _tool_message(tools: _Tools, text: str) -> ChatMessage:
    """The assistant message for a reply ``text`` (prefill included): its content and tool calls."""
    parsed = parse_tool_calls(text, tools.spec.names)
    coerce_calls(tools.spec, parsed.tool_calls)
    blocks: list[Any] = [TextBlock(text=parsed.content)] if parsed.content else []
    blocks += [ToolCallBlock(tool_call_id=c["id"], tool_name=c["name"], tool_kwargs=c["args"])
               for c in parsed.tool_calls]
    extra: dict[str, Any] = {}
    if parsed.tool_calls:  # also OpenAI-shaped, for LlamaIndex code that reads additional_kwargs
        extra["tool_calls"] = [{"id": c["id"], "type": "function",
                                "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
                               for c in parsed.tool_calls]
    if parsed.invalid_tool_calls:
        extra["invalid_tool_calls"] = parsed.invalid_tool_calls
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks or [TextBlock(text="")], additional_kwargs=extra)


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
