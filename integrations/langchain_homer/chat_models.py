"""``HomerLLM``: a LangChain chat model over a local HOMER engine that takes whole documents.

    from langchain_homer import HomerLLM
    llm = HomerLLM()                                   # embedded SmolLM2-135M-Instruct on CPU
    chain = prompt | llm | StrOutputParser()           # long prompts are compressed with HOMER

How a call runs:

1. Messages become chat-template dicts (``messages.to_chat_dicts``), tools and tool history
   included (``tools`` module).
2. Context: ``documents=`` (call kwarg, ``.bind`` or field) is joined and placed before the last
   user message's text; otherwise, if the rendered prompt does not fit one HOMER chunk, the long
   document inside it is found (``documents.find_document_span``) and only it is compressed.
   Short prompts take the engine's plain path (exactly the plain model).
3. The engine (``homer_llm.HomerModel.shared``: loaded lazily, once per settings and process)
   compresses and decodes under its lock, so ``batch``/``abatch`` and concurrent callers are safe.
   Async methods run all of it in a worker thread; the event loop never blocks.

Progress of a compression is dispatched as the LangChain custom event ``"homer_progress"`` with
data ``{"done": int, "total": int}`` (units: layer passes; each stage counts up to its own total:
the calibration table's one-time build for a new model and chunk length, the leaves of a document
the cache has not seen, the merges), associated with the chat-model run, whether the call streams or not: see it with ``astream_events``
(``on_custom_event``) or a callback handler's ``on_custom_event``. Inside a LangGraph node it is
also written to the graph's stream writer as ``{"homer_progress": {...}}`` (``stream_mode="custom"``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManager, CallbackManagerForLLMRun
from langchain_core.callbacks.manager import ahandle_event, handle_event
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, get_callback_manager_for_config
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from homer_llm import DOCUMENT_PLACEHOLDER, GenerationConfig, HomerConfig, HomerModel, PromptParts
from homer_llm.generation import extend_context
from homer_llm.model import local_tokenizer
from homer_llm.tool_calls import (
    PROSE_INSTRUCTION,
    add_system,
    ask_again_reason,
    call_key,
    call_opening_tokens,
    coerce_calls,
    tool_instructions,
)

from .documents import find_document_span, join_documents
from .messages import merge_same_roles, to_chat_dicts
from .scoring import choose
from .structured import SchemaTarget, structured_parser, with_raw
from .tools import (
    ParsedOutput,
    ToolFormat,
    ToolSpec,
    answer_tool_names,
    detect_tool_format,
    first_argument,
    forced_prefill,
    forced_stop,
    json_instruction,
    marker_start,
    name_candidates,
    normalize_tool_choice,
    object_opening,
    parse_tool_calls,
    to_openai_tool,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
PROGRESS_EVENT = "homer_progress"
_DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_IGNORED_CALL_KWARGS = ("stream", "parallel_tool_calls")


_STREAM_RUN: ContextVar[tuple[uuid.UUID, dict] | None] = ContextVar("homer_stream_run", default=None)


def _reset(token: Token) -> None:
    try:
        _STREAM_RUN.reset(token)
    except ValueError:  # reset from another context (generator finalized elsewhere): harmless
        pass


class _Cancelled(Exception):
    """Raised inside the worker when the async caller went away."""


@dataclass
class _Request:
    """Everything one call needs, prepared before the engine runs."""

    engine: HomerModel
    parts: PromptParts
    config: GenerationConfig
    spec: ToolSpec | None
    fmt: ToolFormat
    prefill: str = ""
    choose_name: bool = False
    extension_tokens: int = 0
    json_mode: bool = False
    answer_first: bool = False
    answer_prefill: str = ""
    previous_calls: frozenset[str] = frozenset()
    asked_again: str | None = None
    in_prose: Callable[[], _Request] | None = None
    extra_output_tokens: int = 0
    document_tokens: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    compress_seconds: float = 0.0
    cache_tokens: int = 0
    tree_height: int = 0
    result: Any = None
    started: float = field(default_factory=time.perf_counter)


class HomerLLM(BaseChatModel):
    """A local chat model driven by HOMER: whole long documents fit in its context.

    HOMER (hierarchical context merging) splits a long document into chunks, runs them through
    the model and merges them pairwise with token pruning, so a model with a short window answers
    about the whole document. Short prompts take the plain model path unchanged.

    Setup:
        Install the ``langchain`` extra; the default model (SmolLM2-135M-Instruct) is embedded and
        needs no download. Any local Llama/Mistral/Qwen2/Qwen3 transformers folder works too.

        .. code-block:: bash

            pip install "homer-llm[langchain]"

    Key init args — model:
        model: str | None
            Local folder (or hub id, when the hub is reachable) of the model; None: the embedded
            SmolLM2-135M-Instruct.
        device: str | None
            "cpu", "cuda", "cuda:N"; None: CUDA when available.
        dtype: str | None
            "float32", "bfloat16", "float16"; None/"auto": bf16 on CUDA, fp32 on CPU.

    Key init args — completion:
        max_tokens: int | None
            Most new tokens per call (default 512).
        temperature: float
            0 (default) decodes greedily.
        stop: list[str] | None
            Stop strings.
        documents: list | None
            Texts (or LangChain ``Document`` objects) used as the context of every call; also
            accepted per call (``invoke(..., documents=[...])``) and through ``.bind``.

    Key init args — HOMER:
        chunk_len, cache_len, warmup_layers, pruning, prune_unit, reread_suffix, rope_scaling,
        rope_factor, focus_leaves, focus_margin, focus_locator, focus_keep_document, merge_attention: see each field
        (they mirror ``homer_llm.HomerConfig``); ``document_cache`` reuses compressed documents.

    Instantiate:
        .. code-block:: python

            from langchain_homer import HomerLLM

            llm = HomerLLM(max_tokens=256)                        # the embedded default model
            qwen = HomerLLM(model="/models/Qwen2.5-Coder-1.5B-Instruct", dtype="float32")

    Invoke:
        .. code-block:: python

            messages = [("system", "Answer from the report."), ("human", "What was the total?")]
            llm.invoke(messages, documents=[report_text])
            # AIMessage(content="...", usage_metadata={"input_tokens": ..., "input_token_details":
            #     {"cache_read": 0, "cache_creation": 0}, ...},
            #     response_metadata={"model_name": ..., "homer": {"document_tokens": ..., ...}})

    Stream:
        .. code-block:: python

            for chunk in llm.stream(messages, documents=[report_text]):
                print(chunk.content, end="")

        The last chunk carries the usage and metadata. Compression progress is the custom event
        ``"homer_progress"`` (``{"done", "total"}``), seen by callbacks (``on_custom_event``),
        ``astream_events``, and LangGraph's ``stream_mode="custom"`` inside a graph, also when
        ``invoke`` streams internally. ``streaming=True`` makes ``invoke`` stream tokens to the
        callbacks; LangGraph's ``stream_mode="messages"`` streams the model's tokens in any case.

    Tool calling:
        .. code-block:: python

            from langchain_core.tools import tool

            @tool
            def get_weather(city: str) -> str:
                \"\"\"Get the current weather in a city.\"\"\"
                return "sunny"

            msg = qwen.bind_tools([get_weather]).invoke("What's the weather in Paris?")
            msg.tool_calls
            # [{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_...", "type": "tool_call"}]

        Tools are rendered by the model's chat template (or described in a system message when
        the template cannot); calls are read back from whatever the model writes
        (``<tool_call>`` tags, fenced or bare JSON, several calls: ``homer_llm.tool_calls``).
        ``tool_choice="any"`` / a tool name forces a call (its opening is pre-written).
        ``langchain.agents.create_agent`` works, with and without ``response_format``.

    Structured output:
        .. code-block:: python

            from pydantic import BaseModel

            class Answer(BaseModel):
                total: float
                currency: str

            qwen.with_structured_output(Answer).invoke("Total?", documents=[report_text])
            # Answer(total=1250.0, currency="EUR")

        ``method`` is "function_calling" (default), "json_schema" or "json_mode"; schemas may be
        pydantic classes, TypedDicts or JSON-schema dicts. Answers are validated: one that does
        not follow the schema, or copies it, is a parsing error (``include_raw=True``:
        ``parsing_error``), never a result.

    Token usage:
        ``usage_metadata`` counts input and output tokens; ``input_token_details.cache_read`` /
        ``cache_creation`` report ``document_cache`` hits and misses.

    Async:
        ``ainvoke`` / ``astream`` / ``abatch`` run the model in a worker thread: the event loop
        never blocks. One engine per model and settings is shared in the process; calls to it are
        serialized.

    Construction loads nothing; the engine is built (or reused) on the first call. Pass
    ``engine=`` to use an already built ``homer_llm.HomerModel``. ``timeout``, ``max_retries`` and
    ``api_key`` are accepted (so code written for hosted chat models runs unchanged) and unused:
    nothing goes over a network.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str | None = None
    """Local folder or hub id of the model; None: the embedded SmolLM2-135M-Instruct."""
    device: str | None = None
    """"cpu", "cuda", "cuda:N" or None (CUDA when available)."""
    dtype: str | None = None
    """"float32", "bfloat16", "float16" or None/"auto" (bf16 on CUDA, fp32 on CPU)."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """The transformers attention backend the model is loaded with."""
    chunk_len: int | None = Field(default=None, ge=8)
    """HOMER's M: the longest sequence any forward pass sees (None: half the model window).
    Prompts that fit one chunk take the plain model path."""
    cache_len: int | None = Field(default=None, ge=2)
    """HOMER's T: length of the final compressed cache, at most ``chunk_len`` (None: ``chunk_len``)."""
    warmup_layers: int | None = Field(default=None, ge=0)
    """HOMER's W: layers run per chunk before any merging (None: 12/32 of the layers)."""
    pruning: Literal["calibrated", "uncalibrated", "random"] = "calibrated"
    """Which tokens survive each merge: "calibrated" (bias-corrected significance, the method),
    "uncalibrated" (no bias correction) or "random" (the paper's ablation)."""
    prune_unit: Literal["token", "word"] = "token"
    """"token": every token ranked on its own (the paper); "word": whole words and numbers are kept
    or dropped together."""
    reread_suffix: bool = True
    """True: the question is read again after the merged cache with all its layers; False: answer
    from the tree's averaged question states, as published."""
    rope_scaling: Literal["yarn", "linear"] | None = None
    """"yarn" or "linear": HOMER on a RoPE-scaled view of the model with ``rope_factor`` times longer
    chunks (the paper's HOMER + YaRN); None: off."""
    rope_factor: float = 2.0
    """Only with ``rope_scaling``: the scaling factor (> 1)."""
    focus_leaves: int = Field(default=3, ge=0)
    """k > 0: up to k chunks the question attends to most, best first (a second or later one only
    while they take at most half the window), are read in full after the compressed document (``focus_keep_document``, the default: the hybrid
    read) or alone; 0: the compressed cache alone answers. With ``focus_keep_document=True`` one
    chunk is read on the embedded default model's 8k window: with a plain question after the document
    that read answered 7 of 18 samples, the compressed cache 0 (docs/read-paths.md). Larger windows
    take up to 3, so a fact the locator ranks second is still read (docs/agent.md)."""
    focus_margin: int = Field(default=256, ge=0)
    """Only with focus: tokens of neighbouring text also read on each side of a chosen chunk."""
    focus_locator: Literal["tree", "leaf", "lexical"] = "leaf"
    """Only with focus: "leaf" (default) ranks chunks inside each chunk's own pass, no merges run;
    "tree" ranks by the question's attention after the whole tree; "lexical" by BM25 of the
    question's tokens in each chunk (no model pass; a later chunk only at half the best score)."""
    focus_keep_document: bool = True
    """Only with focus: True (default) reads the chosen chunks in full after HOMER's compressed
    cache of the whole document (the hybrid read), so a question about the whole still sees all
    of it; False: the chosen chunks alone."""
    merge_attention: Literal["auto", "causal", "own-leaf"] = "auto"
    """In merged nodes: "causal" (as published), "own-leaf" (a document token reads only its own
    chunk, the question reads all), "auto" (default: own-leaf without focus on sdpa/eager, else causal)."""
    max_tokens: int | None = Field(default=512, ge=1)
    """Most new tokens per call (None: as many as the model's window allows)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 decodes greedily."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (1: off); only when sampling."""
    top_k: int = Field(default=0, ge=0)
    """Sample among the k most likely tokens (0: off); only when sampling."""
    seed: int | None = None
    """Seed of the sampler (None: random); only when sampling."""
    stop: list[str] | None = None
    """Stop strings (added to those given per call)."""
    documents: list[Any] | None = None
    """Texts or ``Document`` objects used as the context of every call (a per-call
    ``documents=`` replaces them); joined and placed before the last user message's text."""
    edge_tokens: int | None = Field(default=None, ge=0)
    """When the document is found in a long message: token budget of the leading and of the
    trailing paragraphs kept out of it (None: ``min(256, chunk_len // 8)``)."""
    streaming: bool = False
    """True: ``invoke`` streams internally, so callbacks get each token (``on_llm_new_token``)."""
    repeated_calls: Literal["answer", "allow"] = "answer"
    """With tools bound and the choice left to the model, after tool results: "answer" (default)
    drops a reply that only repeats tool calls already made since the user's last message, or
    that is empty, and asks once more with the tools hidden, an instruction to answer from the
    tool results and the tokens that open a call suppressed, so the model answers from the
    results it has (small models often call the same tool again, or end their turn without a
    word, and an agent loop then runs to its recursion limit or ends with no answer); "allow"
    returns such replies as they are."""
    timeout: float | None = None
    """Accepted for compatibility with hosted chat models; unused."""
    max_retries: int | None = None
    """Accepted for compatibility with hosted chat models; unused."""
    api_key: SecretStr | None = None
    """Accepted for compatibility with hosted chat models; unused (nothing goes over a network)."""
    engine: Any = Field(default=None, exclude=True, repr=False)
    """An already built ``homer_llm.HomerModel`` (not serialized)."""
    document_cache: Any = Field(default=None, exclude=True, repr=False)
    """An object with ``get_or_compress(engine, parts, progress) -> (CompressedContext, hit)``
    (e.g. ``homer_llm.doc_cache.DocumentCache``) used whenever a document is compressed; hits and
    misses are reported as ``usage_metadata.input_token_details.cache_read`` / ``cache_creation``."""

    # ------------------------------------------------------------------ validation
    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES} or None, got {value!r}")
        return value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not isinstance(s, str) or not s for s in value):
            raise ValueError(f"stop strings must be non-empty strings, got {value!r}")
        return value

    @field_validator("engine")
    @classmethod
    def _check_engine(cls, value: Any) -> Any:
        if value is not None and not all(hasattr(value, a) for a in ("prepare_chat", "compress", "stream", "tokenizer")):
            raise TypeError(f"engine must be a homer_llm.HomerModel, got {type(value).__name__}")
        return value

    @field_validator("document_cache")
    @classmethod
    def _check_cache(cls, value: Any) -> Any:
        if value is not None and not callable(getattr(value, "get_or_compress", None)):
            raise TypeError(f"document_cache must have get_or_compress(engine, parts, progress), got {type(value).__name__}")
        return value

    @model_validator(mode="after")
    def _check_homer(self) -> HomerLLM:
        self._homer_config()  # raises ValueError/TypeError on an invalid combination
        return self

    def _homer_config(self) -> HomerConfig:
        return HomerConfig(chunk_len=self.chunk_len, cache_len=self.cache_len,
                           warmup_layers=self.warmup_layers, pruning=self.pruning, prune_unit=self.prune_unit,
                           reread_suffix=self.reread_suffix, rope_scaling=self.rope_scaling,
                           rope_factor=self.rope_factor, focus_leaves=self.focus_leaves,
                           focus_margin=self.focus_margin, focus_locator=self.focus_locator,
                           focus_keep_document=self.focus_keep_document, merge_attention=self.merge_attention)

    # ------------------------------------------------------------------ identity
    @property
    def _llm_type(self) -> str:
        return "homer"

    @property
    def model_name(self) -> str:
        """The model's name as reported in response metadata."""
        if self.engine is not None:
            return str(self.engine.name)
        return self.model or DEFAULT_MODEL_NAME

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "device": self.device, "dtype": self.dtype,
            "attn_implementation": self.attn_implementation, "chunk_len": self.chunk_len,
            "cache_len": self.cache_len, "warmup_layers": self.warmup_layers, "pruning": self.pruning,
            "prune_unit": self.prune_unit, "reread_suffix": self.reread_suffix, "rope_scaling": self.rope_scaling,
            "rope_factor": self.rope_factor, "focus_leaves": self.focus_leaves,
            "focus_margin": self.focus_margin, "focus_locator": self.focus_locator,
            "focus_keep_document": self.focus_keep_document, "merge_attention": self.merge_attention,
            "repeated_calls": self.repeated_calls, "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k, "seed": self.seed, "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="homer",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens:
            params["ls_max_tokens"] = max_tokens
        stops = stop or kwargs.get("stop") or self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    # ------------------------------------------------------------------ engine
    def _load_kwargs(self) -> dict[str, Any]:
        """The load settings; HomerModel.shared keys on the non-default ones, so equal settings
        share one engine with the LlamaIndex adapter."""
        return {"device": self.device, "dtype": self.dtype,
                "attn_implementation": self.attn_implementation, "homer": self._homer_config()}

    def get_engine(self, model: str | None = None) -> HomerModel:
        """The engine for this model (or a per-call ``model`` override), loading it on first use.

        Raises:
            ValueError: the model cannot be loaded or is not supported (UnsupportedModelError).
        """
        if self.engine is not None and (model is None or model in (self.engine.name, self.model)):
            return self.engine
        target = self.model if model is None else model
        return HomerModel.shared(target, **self._load_kwargs())

    def _tokenizer(self) -> Any:
        if self.engine is not None:
            return self.engine.tokenizer
        return local_tokenizer(self.model)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` from the model's own tokenizer (no special tokens added)."""
        return list(self._tokenizer()(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens(self, text: str) -> int:
        return len(self.get_token_ids(text))

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence | None = None) -> int:
        """Tokens of ``messages`` rendered with the model's chat template (generation prompt included)."""
        tokenizer = self._tokenizer()
        fmt = detect_tool_format(tokenizer)
        spec = ToolSpec(tuple(convert_to_openai_tool(t) for t in tools)) if tools else None
        dicts = add_system(to_chat_dicts(messages, fmt), tool_instructions(fmt, spec))
        if not getattr(tokenizer, "chat_template", None):
            text = "".join(f"{m['role']}: {m['content']}\n" for m in dicts) + "assistant:"
            return self.get_num_tokens(text)
        native_tools = list(spec.tools) if spec and fmt.native else None
        text = tokenizer.apply_chat_template(dicts, tools=native_tools, tokenize=False, add_generation_prompt=True)
        return self.get_num_tokens(text)

    # ------------------------------------------------------------------ tools
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | Any],
        *,
        tool_choice: str | bool | dict | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (anything ``convert_to_openai_tool`` accepts) for the model to call.

        Args:
            tools: tools, functions, pydantic models, or OpenAI/JSON-schema dicts.
            tool_choice: None/"auto" (the model decides), "any"/"required"/True (must call one),
                "none" (tools hidden), or a tool name (must call that one). Forced calls add a
                system instruction and pre-write the start of the call in the model's format.
            kwargs: bound to the model too (``strict`` and ``parallel_tool_calls`` are accepted
                and ignored: the local parser is lenient and parallel calls are always allowed).
        """
        kwargs.pop("strict", None)
        formatted = [to_openai_tool(t) for t in tools]
        names = [f["function"]["name"] for f in formatted]
        choice = normalize_tool_choice(tool_choice, names)
        if choice not in (None, "auto", "none") and not formatted:
            raise ValueError(f"tool_choice={tool_choice!r} needs at least one tool")
        answers = answer_tool_names(list(tools), names)
        if answers:
            kwargs["answer_tools"] = list(answers)
        return self.bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """A runnable that answers with an object following ``schema``.

        Args:
            schema: a pydantic class (answers are instances), a TypedDict or a JSON-schema dict
                (answers are dicts); None only with ``method="json_mode"`` (any JSON object).
            method: ``"function_calling"`` (default): a forced call of a tool made from the schema,
                its arguments pre-written up to the first value; ``"json_schema"``: a JSON answer
                with the schema's fields listed in a system instruction and the object's opening
                pre-written; ``"json_mode"``: a JSON object (fields listed when a schema is given).
            include_raw: return ``{"raw": AIMessage, "parsed": answer | None, "parsing_error":
                Exception | None}`` instead of raising on a bad answer.
            strict: accepted and ignored (answers are always validated).

        Every answer is validated against the schema; one that does not follow it, or that is a
        copy of the schema itself, is a parsing error (``OutputParserException``), never returned.
        Call arguments reach the model (``.invoke(messages, documents=[...])``).

        Raises:
            ValueError: an unknown method, a method that needs a schema without one, or unsupported
                arguments.
        """
        if method not in ("function_calling", "json_schema", "json_mode"):
            raise ValueError(f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}")
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        if schema is None and method != "json_mode":
            raise ValueError(f"with_structured_output(method={method!r}) needs a schema")
        target = SchemaTarget.of(schema, as_tool=method == "function_calling")
        trace = {"kwargs": {"method": method}, "schema": schema}
        if method == "function_calling":
            llm = self.bind_tools([schema], tool_choice=target.name, ls_structured_output_format=trace)
        else:
            # json_mode only promises a JSON object; a local model still gets the schema as guidance when given
            response_format = ({"type": "json_schema", "schema": target.parameters} if target.parameters
                               else {"type": "json_object"})
            llm = self.bind(response_format=response_format, ls_structured_output_format=trace)
        parser = structured_parser(target, method)
        return with_raw(llm, parser) if include_raw else llm | parser

    # ------------------------------------------------------------------ preparing a call
    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Request:
        if not messages:
            raise ValueError("HomerLLM needs at least one message, got none")
        original = dict(kwargs)
        kwargs = dict(kwargs)
        for key in _IGNORED_CALL_KWARGS:
            kwargs.pop(key, None)
        in_prose = kwargs.pop("_in_prose", False)
        engine = self.get_engine(kwargs.pop("model", None))
        tools = kwargs.pop("tools", None)
        choice = kwargs.pop("tool_choice", None)
        answer_tools = tuple(kwargs.pop("answer_tools", ()) or ())
        documents = kwargs.pop("documents", self.documents)
        response_format = kwargs.pop("response_format", None)
        gen = {
            "max_tokens": kwargs.pop("max_tokens", self.max_tokens),
            "temperature": kwargs.pop("temperature", self.temperature),
            "top_p": kwargs.pop("top_p", self.top_p),
            "top_k": kwargs.pop("top_k", self.top_k),
            "seed": kwargs.pop("seed", self.seed),
        }
        if kwargs:
            raise TypeError(f"HomerLLM got unexpected call arguments {sorted(kwargs)}")

        fmt = detect_tool_format(engine.tokenizer)
        spec = None
        if tools:
            formatted = tuple(to_openai_tool(t) for t in tools)
            names = [t["function"]["name"] for t in formatted]
            spec = ToolSpec(formatted, normalize_tool_choice(choice, names),
                            tuple(n for n in answer_tools if n in names))
        dicts = to_chat_dicts(messages, fmt)
        instructions = [tool_instructions(fmt, spec), PROSE_INSTRUCTION if in_prose else None]
        prefill = answer_prefill = ""
        json_mode = False
        answer_first = spec is not None and spec.answer_name is not None
        if answer_first:
            answer_prefill = forced_prefill(fmt, spec, spec.answer_name)
        if response_format is not None:
            schema = _response_schema(response_format)
            json_text = json_instruction(schema)
            opening = object_opening(schema) if first_argument(schema) else "{"
            if spec is not None and spec.active and not spec.forced:
                # tools and a JSON final answer (create_agent's ProviderStrategy): a free reply first
                answer_first, answer_prefill = True, opening
                instructions.append(f"Call the tools you need; then give your final answer this way. {json_text}")
            else:
                json_mode, prefill = True, opening
                instructions.append(json_text)
        elif spec is not None and spec.forced and not answer_first:
            prefill = forced_prefill(fmt, spec)  # up to the name when several tools may be called
        system_text = "\n\n".join(t for t in instructions if t) or None
        native_tools = list(spec.tools) if spec is not None and spec.active and fmt.native else None

        tail = tuple(engine.tokenizer(prefill, add_special_tokens=False)["input_ids"]) if prefill else ()
        parts, document_tokens = self._build_parts(engine, dicts, system_text, documents, native_tools, tail)
        try:
            engine.plan(parts)
        except ValueError as err:
            raise ValueError(
                f"HomerLLM: the prompt ({len(parts)} tokens, {document_tokens} of them the document) cannot be "
                f"processed by {engine.name} with chunk_len={engine.chunk_len}: {err}"
            ) from err

        stops = list(self.stop or []) + list(stop or [])
        if spec is not None and spec.forced:
            stops += [s for s in forced_stop(fmt) if s not in stops]
        budget = max(1, engine.window - min(len(parts), engine.chunk_len))
        max_new = gen["max_tokens"] if gen["max_tokens"] is not None else budget
        if max_new > budget:
            logger.debug("max_tokens %d clamped to %d (model window %d)", max_new, budget, engine.window)
            max_new = budget
        config = GenerationConfig(
            max_new_tokens=int(max_new), temperature=float(gen["temperature"]), top_p=float(gen["top_p"]),
            top_k=int(gen["top_k"]), seed=gen["seed"], stop=tuple(dict.fromkeys(stops)),
        )
        choose_name = spec is not None and spec.forced and spec.forced_name is None and not answer_first

        def in_prose_request() -> _Request:  # the same call with the tools hidden, for the repeat guard
            return self._prepare(messages, stop, {**original, "tool_choice": "none", "_in_prose": True})

        return _Request(engine, parts, config, spec, fmt, prefill=prefill, choose_name=choose_name,
                        json_mode=json_mode, document_tokens=document_tokens, answer_first=answer_first,
                        previous_calls=_calls_since_last_user(messages), answer_prefill=answer_prefill,
                        in_prose=in_prose_request)

    def _build_parts(
        self, engine: HomerModel, dicts: list[dict[str, Any]], system_text: str | None, documents: Any,
        tools: list | None, tail: tuple[int, ...] = (),
    ) -> tuple[PromptParts, int]:
        """Prompt parts with the context found (explicit documents, or the long span), or plain.

        ``system_text`` (tool and JSON instructions) is added after the document search, so it
        is never mistaken for the document and never compressed. ``tail`` (the ids of a
        pre-written start of the answer) ends the suffix.
        """

        def render(messages: list[dict[str, Any]], document: str | None) -> PromptParts:
            parts = _render(engine, add_system(messages, system_text), document, tools)
            return PromptParts(parts.prefix, parts.context, parts.suffix + tail) if tail else parts

        if documents is not None and not (isinstance(documents, Sequence) and not isinstance(documents, str)
                                          and len(documents) == 0):
            parts = render(_place_document(dicts), join_documents(documents))
            return parts, len(parts.context)
        parts = render(dicts, None)
        if _fits(engine, parts):
            return parts, 0
        edge = self.edge_tokens if self.edge_tokens is not None else min(256, engine.chunk_len // 8)
        contents = [m["content"] if isinstance(m.get("content"), str) else "" for m in dicts]
        span = find_document_span(contents, engine.count_tokens, edge)
        if span is None:
            raise ValueError(
                f"HomerLLM: the prompt has {len(parts)} tokens, more than one chunk ({engine.chunk_len}) of "
                f"{engine.name}, and no message holds a document to compress; pass documents=[...]"
            )
        text = contents[span.message_index]
        logger.info("compressing a document of %d characters found in message %d", span.end - span.start,
                    span.message_index)
        dicts = [dict(m) for m in dicts]
        dicts[span.message_index]["content"] = text[:span.start] + DOCUMENT_PLACEHOLDER + text[span.end:]
        found = render(dicts, text[span.start:span.end])
        try:
            engine.plan(found)
        except ValueError as err:
            raise ValueError(
                f"HomerLLM: the prompt has {len(parts)} tokens, more than one chunk ({engine.chunk_len}) of "
                f"{engine.name}; the longest stretch of text ({len(found.context)} tokens, message "
                f"{span.message_index}) was taken as the document, but the prompt still cannot be processed: {err}. "
                "Shorten the other messages, or pass the document explicitly with documents=[...]"
            ) from err
        return found, len(found.context)

    # ------------------------------------------------------------------ running
    def _compress(self, req: _Request, progress: Callable[[int, int], None] | None) -> Any:
        start = time.perf_counter()
        if req.document_tokens and self.document_cache is not None:
            context, hit = self.document_cache.get_or_compress(req.engine, req.parts, progress)
            if hit:
                req.cache_read = req.document_tokens
            else:
                req.cache_creation = req.document_tokens
        else:
            context = req.engine.compress(req.parts, progress=progress)
        req.compress_seconds = time.perf_counter() - start
        req.cache_tokens = int(context.cache_tokens)
        req.tree_height = int(getattr(context.stats, "tree_height", 0))
        return context

    def _deltas(
        self, req: _Request, progress: Callable[[int, int], None] | None, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """Text deltas of the generation; ``req.result`` holds the Generation once finished."""
        context = self._compress(req, progress)
        if req.choose_name:
            context = self._write_tool_name(req, context)
        if self._guards_repeats(req):
            yield from self._decode_unrepeated(req, context, cancel)
            return
        if req.answer_first:
            text = "".join(self._decode(req, context, cancel))
            if cancel is not None and cancel.is_set():
                return
            if self._free_choice_stands(req, text):
                yield text
                return
            context = self._write_answer_call(req, context)
        yield from self._decode(req, context, cancel)

    @staticmethod
    def _decode(req: _Request, context: Any, cancel: threading.Event | None) -> Iterator[str]:
        """Deltas of one generation from ``context``; ``req.result`` holds it once finished."""
        stream = req.engine.stream(context, req.config)
        inner = iter(stream)
        try:
            for delta in inner:
                if cancel is not None and cancel.is_set():
                    return
                yield delta
            req.result = stream.result
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()

    def _guards_repeats(self, req: _Request) -> bool:
        """Whether this call's reply is checked for repeated calls and emptiness (``repeated_calls``)."""
        return (self.repeated_calls == "answer" and req.spec is not None and req.spec.active
                and not req.spec.forced and not req.answer_first and not req.prefill and bool(req.previous_calls))

    def _decode_unrepeated(self, req: _Request, context: Any, cancel: threading.Event | None) -> Iterator[str]:
        """Deltas of a reply after tool results that neither only repeats earlier calls nor is empty
        (``repeated_calls="answer"``).

        Prose is streamed as it comes. A reply that opens with a call is held until it ends; when
        every call in it was already made since the user's last message, or the reply is empty,
        it is dropped and the model asked again: the same messages with the tools hidden and
        :data:`PROSE_INSTRUCTION` in the system message, the tokens that open a call suppressed
        (``tool_calls.call_opening_tokens``).
        """
        assert req.spec is not None
        inner = self._decode(req, context, cancel)
        text = ""
        for delta in inner:
            text += delta
            if not text.strip():
                continue
            index, _ = marker_start(text, at_start_json=True)
            if index is None or text[:index].strip():  # prose first: never decoded again
                yield text
                yield from inner
                return
        if cancel is not None and cancel.is_set():
            return
        calls = parse_tool_calls(text, req.spec.names).tool_calls
        why = ask_again_reason(text, calls, req.previous_calls)
        if why is None:
            yield text
            return
        logger.info("%s after tool results (%s): asked again with the tools hidden", why,
                    ", ".join(c["name"] for c in calls) or "no call")
        if req.result is not None:
            req.extra_output_tokens += len(req.result.token_ids)
            req.result = None
        req.asked_again = why
        assert req.in_prose is not None
        again = req.in_prose()
        banned = call_opening_tokens(req.engine.tokenizer)
        again.config = replace(again.config, suppress_tokens=tuple(dict.fromkeys(again.config.suppress_tokens + banned)))
        context = self._compress(again, None)
        req.extension_tokens += len(again.parts)
        req.compress_seconds += again.compress_seconds
        yield from self._decode(again, context, cancel)
        req.result = again.result

    @staticmethod
    def _free_choice_stands(req: _Request, text: str) -> bool:
        """Forced "any" with an answer tool, or tools with a JSON final answer: whether the model's
        own reply is a call to keep.

        It stands when it calls the answer tool, or calls a tool with arguments not already
        called since the user's message; prose, unreadable calls and repeated calls fall back to
        the final answer (so an agent forced to call a tool on every turn ends its loop).
        """
        assert req.spec is not None
        calls = parse_tool_calls(text, req.spec.names).tool_calls
        if req.spec.answer_name is not None and any(c["name"] == req.spec.answer_name for c in calls):
            return True
        return any(call_key(c["name"], c["args"]) not in req.previous_calls for c in calls)

    @staticmethod
    def _write_answer_call(req: _Request, context: Any) -> Any:
        """Pre-write the final answer after the compressed prompt (the free reply is dropped): the
        call of the answer tool, or the opening of the JSON answer (tools with a response format)."""
        assert req.spec is not None and req.answer_prefill
        if req.result is not None:
            req.extra_output_tokens += len(req.result.token_ids)
            req.result = None
        full = req.answer_prefill
        ids = list(req.engine.tokenizer(full, add_special_tokens=False)["input_ids"])
        with req.engine.lock:
            context = extend_context(req.engine.parts, context, ids)
        req.prefill = full
        req.extension_tokens += len(ids)
        req.json_mode = req.spec.answer_name is None
        logger.debug("the free reply was no new tool call: the final answer is written (%s)",
                     req.spec.answer_name or "JSON")
        return context

    @staticmethod
    def _write_tool_name(req: _Request, context: Any) -> Any:
        """Forced call among several tools: the model scores each name, the best is written for it."""
        assert req.spec is not None
        names = list(req.spec.names)
        best = names[choose(req.engine, context, name_candidates(req.fmt, names))]
        full = forced_prefill(req.fmt, req.spec, best)
        rest = full[len(req.prefill):]
        ids = list(req.engine.tokenizer(rest, add_special_tokens=False)["input_ids"])
        with req.engine.lock:
            context = extend_context(req.engine.parts, context, ids)
        req.prefill = full
        req.extension_tokens = len(ids)
        logger.debug("forced tool call: the model chose %s among %s", best, names)
        return context

    def _message_fields(self, req: _Request, text: str) -> tuple[str, ParsedOutput | None]:
        """(content, parsed tool calls or None) of the finished output ``text`` (prefill excluded)."""
        full = req.prefill + text
        if req.json_mode:
            return _trim_json(full), None
        if req.spec is None or not req.spec.active:
            return text, None
        parsed = parse_tool_calls(full, req.spec.names)
        coerce_calls(req.spec, parsed.tool_calls)
        if req.spec.forced and not parsed.tool_calls and not parsed.invalid_tool_calls:
            parsed.invalid_tool_calls.append({
                "name": req.spec.forced_name, "args": full, "id": None, "type": "invalid_tool_call",
                "error": f"tool_choice={req.spec.choice!r} required a tool call, but the model wrote none",
            })
            parsed.content = ""
        return parsed.content, parsed

    def _usage(self, req: _Request) -> dict[str, Any]:
        output = (len(req.result.token_ids) if req.result is not None else 0) + req.extra_output_tokens
        inputs = len(req.parts) + req.extension_tokens
        return {
            "input_tokens": inputs,
            "output_tokens": output,
            "total_tokens": inputs + output,
            "input_token_details": {"cache_read": req.cache_read, "cache_creation": req.cache_creation},
        }

    def _metadata(self, req: _Request) -> dict[str, Any]:
        result = req.result
        return {
            "model_name": str(req.engine.name),
            "finish_reason": result.finish_reason if result is not None else "stop",
            "homer": {
                "document_tokens": req.document_tokens,
                "cache_tokens": req.cache_tokens,
                "tree_height": req.tree_height,
                "compress_seconds": round(req.compress_seconds, 4),
                "generate_seconds": round(result.seconds, 4) if result is not None else 0.0,
                **({"asked_again": req.asked_again} if req.asked_again else {}),
            },
        }

    def _result(self, req: _Request, text: str) -> ChatResult:
        content, parsed = self._message_fields(req, text)
        message = AIMessage(
            content=content,
            tool_calls=parsed.tool_calls if parsed else [],
            invalid_tool_calls=parsed.invalid_tool_calls if parsed else [],
            usage_metadata=self._usage(req),
            response_metadata=self._metadata(req),
        )
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": str(req.engine.name)})

    def _chunks(self, req: _Request, deltas: Iterator[str]) -> Iterator[ChatGenerationChunk]:
        """Stream chunks: plain text as it comes; text that may be a tool call is held back.

        The last chunk (``chunk_position="last"``) carries the rest of the content, the parsed
        tool calls as ``tool_call_chunks``, the usage and the response metadata.
        """
        tools_on = req.spec is not None and req.spec.active
        hold_all = bool(req.prefill) or req.answer_first
        text = ""
        emitted = 0
        held = False
        for delta in deltas:
            text += delta
            if hold_all or held:
                continue
            end = len(text)
            if tools_on:
                index, certain = marker_start(text, at_start_json=True)
                if index is not None:
                    end, held = index, certain
                end = len(text[:end].rstrip())  # trailing spaces wait: they may precede a call
            if end > emitted:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text[emitted:end]))
                emitted = end
        content, parsed = self._message_fields(req, text)
        sent = text[:emitted]
        if parsed is None and not req.json_mode:
            rest = content[emitted:]
        elif content.startswith(sent.lstrip()):
            rest = content[len(sent.lstrip()):]
        else:
            rest = ""
        chunks = []
        if parsed is not None:
            for i, call in enumerate(parsed.tool_calls):
                chunks.append({"name": call["name"], "args": json.dumps(call["args"], ensure_ascii=False),
                               "id": call["id"], "index": i, "type": "tool_call_chunk"})
            for j, bad in enumerate(parsed.invalid_tool_calls, start=len(chunks)):
                chunks.append({"name": bad["name"], "args": bad["args"], "id": bad["id"], "index": j,
                               "type": "tool_call_chunk"})
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=rest, tool_call_chunks=chunks, usage_metadata=self._usage(req),
            response_metadata=self._metadata(req), chunk_position="last",
        ))

    # ------------------------------------------------------------------ progress
    def _progress_target(self, run_manager: Any) -> tuple[list, Any, list, dict] | None:
        """(handlers, run_id, tags, metadata) that "homer_progress" events go to, or None.

        LangChain hands a run manager to ``_generate``/``_agenerate`` and to the v3 event stream,
        but not to ``_stream``/``_astream``; for those, ``stream``/``astream`` below record the
        run's id and config. Inside a chain without either, events go to the enclosing step.
        """
        if run_manager is not None:
            return run_manager.handlers, run_manager.run_id, run_manager.tags, run_manager.metadata
        recorded = _STREAM_RUN.get()
        if recorded is not None:
            run_id, config = recorded
            manager = CallbackManager.configure(
                config.get("callbacks"), self.callbacks, self.verbose, config.get("tags"), self.tags,
                config.get("metadata"), self.metadata,
            )
            return manager.handlers, run_id, manager.tags, manager.metadata
        parent = get_callback_manager_for_config(ensure_config())
        if parent.parent_run_id is not None:
            return parent.handlers, parent.parent_run_id, parent.tags, parent.metadata
        return None

    def _sync_progress(self, run_manager: CallbackManagerForLLMRun | None) -> Callable[[int, int], None] | None:
        target = self._progress_target(run_manager)
        writer = _graph_writer()
        if (target is None or not target[0]) and writer is None:
            return None

        def report(done: int, total: int) -> None:
            data = {"done": int(done), "total": int(total)}
            if target is not None and target[0]:
                handlers, run_id, tags, metadata = target
                handle_event(handlers, "on_custom_event", "ignore_custom_event", PROGRESS_EVENT, data,
                             run_id=run_id, tags=tags, metadata=metadata)
            if writer is not None:
                writer({PROGRESS_EVENT: data})

        return report

    def _async_progress(
        self, run_manager: AsyncCallbackManagerForLLMRun | None, loop: asyncio.AbstractEventLoop,
        cancel: threading.Event,
    ) -> Callable[[int, int], None]:
        """A reporter called in the worker thread; events are handled on the event loop."""
        target = self._progress_target(run_manager)
        writer = _graph_writer()

        def report(done: int, total: int) -> None:
            if cancel.is_set():
                raise _Cancelled()
            data = {"done": int(done), "total": int(total)}
            try:
                if writer is not None:
                    loop.call_soon_threadsafe(writer, {PROGRESS_EVENT: data})
                if target is None or not target[0]:
                    return
                handlers, run_id, tags, metadata = target
                coro = ahandle_event(handlers, "on_custom_event", "ignore_custom_event", PROGRESS_EVENT, data,
                                     run_id=run_id, tags=tags, metadata=metadata)
                try:
                    asyncio.run_coroutine_threadsafe(coro, loop)
                except RuntimeError:
                    coro.close()
                    raise
            except RuntimeError:  # loop closed: nobody listens any more
                pass

        return report

    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """``BaseChatModel.invoke``, recording the run so compression progress reaches its callbacks
        also when the call streams internally (``streaming=True``, LangGraph's "messages" mode)."""
        config = ensure_config(config)
        config = {**config, "run_id": config.get("run_id") or uuid.uuid4()}
        token = _STREAM_RUN.set((config["run_id"], config))
        try:
            return super().invoke(input, config, stop=stop, **kwargs)
        finally:
            _reset(token)

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """``BaseChatModel.ainvoke``, recording the run (see ``invoke``)."""
        config = ensure_config(config)
        config = {**config, "run_id": config.get("run_id") or uuid.uuid4()}
        token = _STREAM_RUN.set((config["run_id"], config))
        try:
            return await super().ainvoke(input, config, stop=stop, **kwargs)
        finally:
            _reset(token)

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """``BaseChatModel.stream``, recording the run so compression progress reaches its callbacks."""
        config = ensure_config(config)
        config = {**config, "run_id": config.get("run_id") or uuid.uuid4()}
        token = _STREAM_RUN.set((config["run_id"], config))
        try:
            yield from super().stream(input, config, stop=stop, **kwargs)
        finally:
            _reset(token)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """``BaseChatModel.astream``, recording the run so compression progress reaches its callbacks."""
        config = ensure_config(config)
        config = {**config, "run_id": config.get("run_id") or uuid.uuid4()}
        token = _STREAM_RUN.set((config["run_id"], config))
        try:
            async for chunk in super().astream(input, config, stop=stop, **kwargs):
                yield chunk
        finally:
            _reset(token)

    # ------------------------------------------------------------------ LangChain entry points
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        progress = self._sync_progress(run_manager)
        req = self._prepare(messages, stop, kwargs)
        text = "".join(self._deltas(req, progress))
        return self._result(req, text)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        progress = self._sync_progress(run_manager)
        req = self._prepare(messages, stop, kwargs)
        yield from self._chunks(req, self._deltas(req, progress))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        progress = self._async_progress(run_manager, loop, cancel)

        def work() -> ChatResult:
            req = self._prepare(messages, stop, kwargs)
            text = "".join(self._deltas(req, progress, cancel))
            return self._result(req, text)

        try:
            return await asyncio.to_thread(work)
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        progress = self._async_progress(run_manager, loop, cancel)

        def post(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop closed
                cancel.set()

        def work() -> None:
            try:
                req = self._prepare(messages, stop, kwargs)
                chunks = self._chunks(req, self._deltas(req, progress, cancel))
                try:
                    for chunk in chunks:
                        if cancel.is_set():
                            break
                        post(("chunk", chunk))
                finally:
                    chunks.close()
            except _Cancelled:
                pass
            except BaseException as err:  # noqa: BLE001 - handed to the consumer
                post(("error", err))
                return
            post(("done", None))

        worker = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            while True:
                kind, item = await queue.get()
                if kind == "chunk":
                    yield item
                elif kind == "error":
                    raise item
                else:
                    break
        finally:
            cancel.set()
            if worker.done():
                worker.result()


# ---------------------------------------------------------------------------------- helpers
def _graph_writer() -> Callable[[Any], None] | None:
    """LangGraph's stream writer when running inside a graph node (stream_mode="custom"), else None."""
    try:
        from langgraph.config import get_stream_writer
    except ImportError:
        return None
    try:
        return get_stream_writer()
    except (RuntimeError, KeyError, AttributeError):  # not inside a LangGraph run
        return None


def _render(engine: HomerModel, dicts: list[dict[str, Any]], document: str | None, tools: list | None) -> PromptParts:
    """``engine.prepare_chat``; a template that refuses the turn order gets same-role turns merged."""
    from jinja2 import TemplateError

    try:
        return engine.prepare_chat(dicts, document, tools=tools)
    except TemplateError as first:
        merged = merge_same_roles(dicts)
        if merged == dicts:
            raise ValueError(f"the chat template of {engine.name} cannot render these messages: {first}") from first
        try:
            return engine.prepare_chat(merged, document, tools=tools)
        except TemplateError as err:
            raise ValueError(f"the chat template of {engine.name} cannot render these messages: {err}") from err


def _fits(engine: HomerModel, parts: PromptParts) -> bool:
    try:
        engine.plan(parts)
    except ValueError:
        return False
    return True


def _place_document(dicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put the document placeholder before the text of the last user message (or add one)."""
    dicts = [dict(m) for m in dicts]
    if any(DOCUMENT_PLACEHOLDER in str(m.get("content", "")) for m in dicts):
        return dicts  # the caller placed it
    for m in reversed(dicts):
        if m["role"] == "user":
            text = m["content"]
            m["content"] = f"{DOCUMENT_PLACEHOLDER}\n\n{text}" if text.strip() else DOCUMENT_PLACEHOLDER
            return dicts
    dicts.append({"role": "user", "content": DOCUMENT_PLACEHOLDER})
    return dicts


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema of a ``response_format`` (None: any JSON object).

    Accepts ``{"type": "json_object"}``, ``{"type": "json_schema", "schema": {...}}`` and OpenAI's
    ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``.

    Raises:
        ValueError: anything else.
    """
    if not isinstance(response_format, dict) or response_format.get("type") not in ("json_schema", "json_object"):
        raise ValueError(f"response_format must be {{'type': 'json_schema'|'json_object', ...}}, got {response_format!r}")
    if response_format["type"] == "json_object":
        return None
    schema = response_format.get("schema")
    if schema is None and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise ValueError(f"response_format's schema must be a dict, got {type(schema).__name__}")
    return schema or None


def _calls_since_last_user(messages: Sequence[BaseMessage]) -> frozenset[str]:
    """The tool calls (name and arguments) the assistant already made since the last user message."""
    seen: set[str] = set()
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        if isinstance(message, AIMessage):
            seen.update(call_key(c["name"], c.get("args")) for c in message.tool_calls)
    return frozenset(seen)


def _trim_json(text: str) -> str:
    """The first complete JSON value of ``text`` (the model may keep writing after it)."""
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return text
    return text[:end]
