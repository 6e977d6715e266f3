"""``HomerModel``: the one user-facing class of the engine.

Loads a model (the embedded default, a local folder, or a hub id), and turns prompt parts into a
compressed cache and text. Shared instances per (model, device, dtype, backend, HOMER config) are
available through ``HomerModel.shared`` so integrations never load the same weights twice; every
public method that touches the model holds ``self.lock``, so concurrent callers are serialized.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import compat
from .calibration import get_bias
from .config import GenerationConfig, HomerConfig
from .engine import CompressedContext, Progress, compress
from .focus import choose_leaves, focus_spans, focused_parts, leaf_attention, leaf_relevance
from .generation import Generation, TextStream, generate
from .prompt import PromptParts, split_chat, split_text
from .schedule import Plan, make_plan
from .spans import word_spans

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """None/"auto": bfloat16 on CUDA, float32 on CPU.

    The CPU default stays float32 (transformers' own CPU default, and the precision every CPU
    result of this project was measured in) even on CPUs with AMX, where bfloat16 is several
    times faster: the choice logs a hint there instead.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        if device.startswith("cpu") and compat.cpu_has_amx():
            # Measured on a 2-core AMX Xeon (benchmarks/eval_results_cpu.md, session 14): HOMER
            # 4-5x faster in bfloat16 with 98 of 100 passkey verdicts equal to float32's.
            logger.info("this CPU has AMX: dtype='bfloat16' (CLI: --dtype bfloat16) is several times "
                        "faster than the float32 default here")
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return _DTYPES[dtype]


def resolve_device(device: str | None) -> str:
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


@dataclass(frozen=True)
class Answer:
    """Result of ``HomerModel.ask`` / ``answer``: the text plus what it cost."""

    text: str
    input_tokens: int
    cache_tokens: int
    output_tokens: int
    finish_reason: str
    compress_seconds: float
    generate_seconds: float
    peak_kv_bytes: int
    tree_height: int


def resolve_merge_attention(homer: HomerConfig, attn_implementation: str) -> str:
    """The merge attention ``homer`` asks for on a model whose attention backend is ``attn_implementation``.

    "auto" becomes "own-leaf" (a context token reads only its own leaf in merged nodes; passkey on
    the default model at or above "causal" at 1x-8x; perplexity at 8x unchanged with recent text
    whole after the cache, 4 % worse with the cache alone: README) where the backend takes an
    arbitrary mask and no focus is asked for, else "causal". An explicit
    "own-leaf" on a backend without masks is a ValueError.
    """
    maskable = attn_implementation in compat.MASKABLE_ATTENTION
    if homer.merge_attention == "own-leaf" and not maskable:
        raise ValueError(f"HomerConfig.merge_attention='own-leaf' needs an arbitrary mask, one of "
                         f"{compat.MASKABLE_ATTENTION}, not {attn_implementation!r}")
    if homer.merge_attention != "auto":
        return homer.merge_attention
    if not maskable:
        logger.info("merge_attention='auto': %s takes no arbitrary mask, merges stay causal", attn_implementation)
        return "causal"
    return "causal" if homer.focus_leaves else "own-leaf"


class HomerModel:
    """A causal LM driven by HOMER.

    Attributes:
        model: the transformers model (eval mode).
        tokenizer: its tokenizer.
        name: model identity (path or hub id) used in cache keys and metadata.
        homer: the HomerConfig with chunk_len / cache_len resolved for this model.
        lock: re-entrant lock serializing all model work.
    """

    _shared: dict[tuple, HomerModel] = {}
    _shared_lock = threading.Lock()

    def __init__(self, model, tokenizer, *, name: str, homer: HomerConfig | None = None) -> None:
        homer = homer or HomerConfig()
        if homer.rope_scaling is not None:
            if getattr(model, "hf_device_map", None):
                raise ValueError("HomerConfig.rope_scaling is not supported on a model spread with device_map")
            compat.check_supported(model)  # an unsupported model gets its own error, not one from building the view
            model = compat.scaled_model(model, homer.rope_scaling, homer.rope_factor)  # shares every weight
            name = f"{name}+{homer.rope_scaling}{homer.rope_factor:g}"
        self.parts = compat.model_parts(model)
        homer = replace(homer, merge_attention=resolve_merge_attention(homer, self.parts.attn_implementation))
        compat.use_sdpa_repeat_kv(model)  # float32 GQA on CUDA only: keeps long plain prefills off sdpa's math kernel
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        chunk = homer.chunk_len or self.parts.window // 2
        if chunk > self.parts.window:
            raise ValueError(f"chunk_len {chunk} exceeds the model window {self.parts.window}")
        if homer.cache_len is not None and homer.cache_len > chunk:
            # the final cache is the root of the merge tree, one node of at most chunk_len tokens
            raise ValueError(f"cache_len {homer.cache_len} exceeds chunk_len {chunk}: the final cache "
                             "holds at most one chunk; raise chunk_len or lower cache_len")
        self.homer = replace(homer, chunk_len=chunk, cache_len=homer.cache_len or chunk)
        self.lock = threading.RLock()
        self._bias: torch.Tensor | None = None
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        homer: HomerConfig | None = None,
        device_map: str | dict | None = None,
        **model_kwargs: Any,
    ) -> HomerModel:
        """Load ``model`` (None: the embedded default SmolLM2-135M-Instruct) for HOMER.

        Args:
            model: local folder or hub id (hub ids need network access the first time).
            device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
            dtype: "float32", "bfloat16", "float16", a torch dtype, or None ("auto").
            attn_implementation: "sdpa" (default), "eager" or "flash_attention_2".
            device_map: passed to transformers/accelerate to spread layers over devices.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if attn_implementation not in compat.SUPPORTED_ATTENTION:
            raise ValueError(f"attn_implementation must be one of {compat.SUPPORTED_ATTENTION}, got {attn_implementation!r}")
        if attn_implementation == "flash_attention_2":
            import importlib.util

            if importlib.util.find_spec("flash_attn") is None:
                raise ValueError("attn_implementation='flash_attention_2' needs the flash-attn package installed")
        if model is None:
            from .default_model import default_model_path

            path: str = str(default_model_path())
        else:
            path = str(model)
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            kwargs = dict(dtype=torch_dtype, attn_implementation=attn_implementation, **model_kwargs)
            if device_map is not None:
                kwargs["device_map"] = device_map
            lm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as err:
            raise ValueError(f"cannot load model {path!r}: {err}") from err
        if device_map is None:
            lm.to(device)
        return cls(lm, tokenizer, name=path if model is not None else "SmolLM2-135M-Instruct", homer=homer)

    @staticmethod
    def shared_key(model: str | Path | None = None, **kwargs: Any) -> tuple:
        """The key of :meth:`shared`: the model and the settings that differ from the defaults.

        Settings equal to the defaults do not split the key, so passing dtype="auto" or
        homer=HomerConfig() shares the engine of a caller that passed nothing.
        """
        defaults = {"device": None, "dtype": None, "attn_implementation": "sdpa", "homer": None}
        explicit = {k: v for k, v in kwargs.items()
                    if not (k in defaults and (v == defaults[k] or (k == "dtype" and v == "auto")
                                               or (k == "homer" and v == HomerConfig())))}
        return (str(model), tuple(sorted((k, repr(v)) for k, v in explicit.items())))

    @classmethod
    def shared(cls, model: str | Path | None = None, **kwargs: Any) -> HomerModel:
        """A process-wide instance per (model, settings): loaded once, reused by every caller."""
        key = cls.shared_key(model, **kwargs)
        with cls._shared_lock:
            if key not in cls._shared:
                cls._shared[key] = cls.load(model, **kwargs)
            return cls._shared[key]

    # ------------------------------------------------------------------ properties
    @property
    def window(self) -> int:
        """The model's native context window (max_position_embeddings)."""
        return self.parts.window

    @property
    def chunk_len(self) -> int:
        assert self.homer.chunk_len is not None
        return self.homer.chunk_len

    @property
    def device(self) -> torch.device:
        return self.parts.embed_device

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ prompts
    def prepare_chat(
        self,
        messages: Sequence[dict[str, Any]],
        document: str | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> PromptParts:
        """Render chat ``messages`` (one content holding DOCUMENT_PLACEHOLDER) around ``document``."""
        if document is not None:
            check_document(document)
        if getattr(self.tokenizer, "chat_template", None):
            return split_chat(self.tokenizer, messages, document, tools=tools)
        if tools:
            raise ValueError(f"model {self.name!r} has no chat template, so tools cannot be rendered")
        return _raw_chat(self.tokenizer, messages, document)

    def prepare_question(
        self, document: str, question: str, *, system: str | None = None,
        instruction: str | None = None, answer_prefix: str | None = None,
    ) -> PromptParts:
        """The standard document-QA prompt: [instruction,] the document, then the question, in one user turn.

        Args:
            system: system prompt (None: the chat template's default, if any).
            instruction: text before the document in the user turn. It is part of HOMER's prefix,
                so every chunk sees it; small models follow a task stated here better than in
                the system prompt.
            answer_prefix: text the assistant's answer starts with: a final assistant message that
                is continued (see ``split_chat``), so it is the end of the suffix. HOMER scores tokens by the attention of the
                prompt's last token, so a prefix naming what is sought (e.g. "The pass key is")
                steers which document tokens survive pruning.
        """
        from .prompt import DOCUMENT_PLACEHOLDER

        check_document(document)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"the question is empty: {question!r}")
        for name, value in (("answer_prefix", answer_prefix), ("instruction", instruction), ("system", system)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be str or None, got {type(value).__name__}")
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        head = f"{instruction.strip()}\n\n" if instruction and instruction.strip() else ""
        messages.append({"role": "user", "content": f"{head}{DOCUMENT_PLACEHOLDER}\n\n{question.strip()}"})
        if answer_prefix:
            messages.append({"role": "assistant", "content": answer_prefix})
        return self.prepare_chat(messages, document)

    # ------------------------------------------------------------------ the method
    def plan(self, parts: PromptParts) -> Plan:
        """The HOMER schedule for ``parts`` (raises ValueError if it cannot fit)."""
        return make_plan(
            len(parts.prefix),
            len(parts.context),
            len(parts.suffix),
            chunk_len=self.chunk_len,
            cache_len=self.homer.cache_len or self.chunk_len,
            num_layers=self.parts.num_layers,
            warmup_layers=self.homer.warmup_layers,
        )

    def bias_table(self) -> torch.Tensor | None:
        """The calibration table for this model (built once, then loaded), or None if unused."""
        if self.homer.pruning != "calibrated":
            return None
        if self._bias is None:
            with self.lock:
                self._bias = get_bias(
                    self.parts, self.tokenizer, self.name, self.model.config.to_dict(),
                    self.chunk_len, self.homer.calibration_samples,
                )
        return self._bias

    def spans_for(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Word-span ids of prompt ``ids`` ([n] long) when ``prune_unit == "word"``, else None."""
        if self.homer.prune_unit != "word":
            return None
        return word_spans(self.tokenizer, ids.tolist())

    def compress(self, parts: PromptParts, *, progress: Progress | None = None) -> CompressedContext:
        """Run HOMER over the prompt: a compact cache, next position id and last logits."""
        plan = self.plan(parts)
        plain = plan.num_leaves == 1 and plan.root.keep_ctx >= plan.context_len  # one chunk, nothing pruned
        if not plain and not parts.prefix:
            logger.warning("compressing a prompt with no prefix: every chunk starts with a different "
                           "token; prompt.anchor_prefix(parts) gives them a shared start")
        focus = bool(self.homer.focus_leaves) and plan.num_leaves > 1
        leaf_locator = focus and self.homer.focus_locator == "leaf"
        # the plain path prunes nothing and the leaf locator ranks by raw attention: neither needs the table
        bias = None if plain or leaf_locator else self.bias_table()
        gen = None
        if self.homer.pruning == "random":
            gen = torch.Generator().manual_seed(self.homer.seed)
        ids = torch.tensor(parts.ids, dtype=torch.long)
        spans = self.spans_for(ids)
        tree_progress = progress
        if focus and progress is not None:
            report = progress

            def tree_progress(done: int, total: int) -> None:  # one count: the locator, then the plain read
                report(done, total + self.parts.num_layers)

        with self.lock:
            try:
                if leaf_locator:
                    started = time.perf_counter()
                    relevance = leaf_relevance(self.parts, plan, ids, tree_progress)
                    return self._focus(parts, plan, relevance, time.perf_counter() - started, progress)
                # focus reads the question afresh itself (focus.question_scores): no reread pass here
                context = compress(self.parts, plan, ids, bias=bias, random_generator=gen, progress=tree_progress,
                                   spans=spans, reread_suffix=self.homer.reread_suffix and not focus,
                                   own_leaf=self.homer.merge_attention == "own-leaf")
                if focus:
                    suffix = torch.tensor(parts.suffix, dtype=torch.long)
                    attention = leaf_attention(self.parts, plan, context, suffix, bias)
                    return self._focus(parts, plan, attention, context.stats.seconds, progress,
                                       context.stats.peak_kv_bytes)
                return context
            except torch.OutOfMemoryError as err:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise MemoryError(
                    f"out of memory compressing {len(parts)} tokens with chunk_len={self.chunk_len}; "
                    "lower chunk_len, use a smaller dtype, or spread the model with device_map"
                ) from err

    @property
    def focus_budget(self) -> int:
        """Most tokens of a focused prompt (``HomerConfig.focus_leaves``): the window less half of
        what HOMER itself leaves free for the answer (window - chunk_len)."""
        return self.parts.window - (self.parts.window - self.chunk_len) // 2

    def _focus(self, parts: PromptParts, plan: Plan, attention: torch.Tensor, located_in: float,
               progress: Progress | None = None, peak_kv_bytes: int = 0) -> CompressedContext:
        """The plain read of the leaves ranked first by ``attention`` ([N], ``homer_llm.focus``);
        caller holds the lock. ``located_in``: seconds the locator took; ``peak_kv_bytes``: its K/V peak.

        ``progress`` continues the locator's count: its layer passes, then the plain read's L."""
        budget = self.focus_budget - len(parts.prefix) - len(parts.suffix)
        leaves = choose_leaves(plan, attention, self.homer.focus_leaves, budget)
        spans = focus_spans(plan, leaves, self.homer.focus_margin, budget)
        focused, index = focused_parts(parts, spans)
        logger.info("focus: leaves %s of %d (attention %s), context spans %s, %d tokens read plainly", leaves,
                    plan.num_leaves, [round(float(attention[i]), 3) for i in leaves], spans, len(focused))
        one = make_plan(len(focused.prefix), len(focused.context), len(focused.suffix), chunk_len=len(focused),
                        cache_len=len(focused), num_layers=self.parts.num_layers, warmup_layers=0)
        done = plan.layer_passes if self.homer.focus_locator == "tree" else plan.leaf_passes
        plain = compress(self.parts, one, torch.tensor(focused.ids, dtype=torch.long),
                         progress=None if progress is None else lambda d, t: progress(done + d, done + t))
        stats = replace(plain.stats, input_tokens=len(parts), tree_height=plan.height, num_leaves=plan.num_leaves,
                        peak_kv_bytes=max(peak_kv_bytes, plain.stats.peak_kv_bytes),
                        seconds=located_in + plain.stats.seconds)
        assert plain.kept is not None  # the engine tracks every token's origin
        return CompressedContext(plain.kv, plain.next_position, plain.last_logits, stats, index[plain.kept.cpu()])

    def stream(
        self, source: PromptParts | CompressedContext, config: GenerationConfig | None = None,
        *, progress: Progress | None = None,
    ) -> TextStream:
        """Text deltas for ``source``; ``stream.result`` holds the Generation once exhausted.

        The model lock is held while the stream is being consumed, so finish (or close) it.
        """
        context = source if isinstance(source, CompressedContext) else self.compress(source, progress=progress)
        return TextStream(self.parts, self.tokenizer, context, config or GenerationConfig(), self.eos_ids, lock=self.lock)

    def generate(
        self, source: PromptParts | CompressedContext, config: GenerationConfig | None = None,
        *, progress: Progress | None = None,
    ) -> Generation:
        context = source if isinstance(source, CompressedContext) else self.compress(source, progress=progress)
        with self.lock:
            return generate(self.parts, self.tokenizer, context, config or GenerationConfig(), self.eos_ids)

    def answer(
        self, parts: PromptParts, config: GenerationConfig | None = None, *,
        progress: Progress | None = None, answer_prefix: str | None = None,
    ) -> Answer:
        """Compress, then generate; with token counts and timings.

        ``answer_prefix``: the text ``parts`` already end with (see :meth:`prepare_question`); it
        is put back in front of the generated text so the answer reads whole.
        """
        context = self.compress(parts, progress=progress)
        out = self.generate(context, config)
        s = context.stats
        text = ((answer_prefix or "") + out.text).strip()
        return Answer(text, s.input_tokens, s.cache_tokens, len(out.token_ids), out.finish_reason,
                      s.seconds, out.seconds, s.peak_kv_bytes, s.tree_height)

    def ask(
        self, document: str, question: str, *, system: str | None = None, instruction: str | None = None,
        answer_prefix: str | None = None, config: GenerationConfig | None = None, progress: Progress | None = None,
    ) -> Answer:
        """Answer ``question`` about ``document`` (the whole document goes into the context).

        ``instruction``, ``answer_prefix``: see :meth:`prepare_question`; the returned text
        includes the answer prefix.
        """
        parts = self.prepare_question(document, question, system=system, instruction=instruction,
                                      answer_prefix=answer_prefix)
        return self.answer(parts, config, progress=progress, answer_prefix=answer_prefix)


def check_document(document: Any) -> None:
    """Refuse documents HOMER cannot take: not text, empty, or binary."""
    if not isinstance(document, str):
        raise TypeError(f"document must be str, got {type(document).__name__}")
    if not document.strip():
        raise ValueError("the document is empty")
    if "\x00" in document:
        raise ValueError("the document contains NUL bytes: it looks binary, not text")


def _raw_chat(tokenizer, messages: Sequence[dict[str, Any]], document: str | None) -> PromptParts:
    """Template-free rendering for base models: 'role: content' lines, then 'assistant:'.

    A final assistant message is continued, as ``split_chat`` does: 'assistant:' + its text.
    """
    from .prompt import DOCUMENT_PLACEHOLDER

    messages = list(messages)
    prefill = ""
    if messages and messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str):
        prefill = messages.pop()["content"]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:" + prefill
    if document is None:
        return split_text(tokenizer, text, "", "")
    head, _, tail = text.partition(DOCUMENT_PLACEHOLDER)
    return split_text(tokenizer, head, document, tail)

