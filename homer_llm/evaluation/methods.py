"""The long-context methods compared by the evaluation, all on the same loaded model.

Each method answers a QASample (greedy text after the sample's answer prefix) and, where it makes
sense, scores a PPLSample (per-token NLL of the target). Every method receives a Deadline and must
stop with TimeBudgetExceeded once it has passed.

    homer            HOMER, calibrated significance, causal merges as published (the method; the
                     library's default merges are own-leaf: ``homer-ownleaf``)
    homer-uncal      HOMER with B = 0 (no recency-bias correction)
    homer-random     HOMER with random pruning (the paper's ablation)
    homer-word       HOMER, calibrated, pruning whole words (``HomerConfig.prune_unit="word"``)
    homer-merged     HOMER, calibrated, answering from the tree's averaged suffix, as published
                     (``HomerConfig.reread_suffix=False``; ``homer`` follows the run's setting)
    homer-yarn       HOMER on a YaRN-scaled model (factor f) with chunk_len scaled by f
    homer-focus      HOMER's tree as a locator: the plain model reads the k leaves the question
                     attends to most (``HomerConfig.focus_leaves``; question answering only)
    homer-focus-leaf homer-focus whose leaves are ranked inside each leaf's own pass, the merges
                     not run (``HomerConfig.focus_locator="leaf"``)
    homer-ownleaf    HOMER, calibrated, whose merged nodes keep every context token to its own
                     leaf (``HomerConfig.merge_attention="own-leaf"``; the question reads all):
                     what ``HomerModel`` runs by default on sdpa/eager attention without focus
    homer-ownleaf-uncal, homer-ownleaf-random  the two ablations above on own-leaf merges, so
                     they pair with the library's default rather than with the published tree
    homer-hybrid     the whole document compressed (own-leaf merges) plus the leaf the question
                     points to most (leaf locator) read in full after it, in one cache
                     (``homer_llm.hybrid``)
    homer-hybrid3    homer-hybrid reading up to three leaves (a second or later one only within
                     half the window, ``hybrid.leaves_to_read``): the adapters' default
    full             the plain model over the whole prompt, also beyond its window
    truncate         the plain model over the prompt cut to the window: prefix and suffix kept,
                     the END of the document kept (for perplexity: the last window of tokens)
    yarn, ntk, linear  the plain model with transformers' RoPE scaling (YaRN, dynamic NTK,
                     linear interpolation), factor = ceil(length / window) (at least 1) unless fixed
    bm25             BM25 (bm25s) top-ranked passages (those matching the question) that fit the
                     window, kept in document order (question answering only)
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from dataclasses import dataclass, replace
from typing import Any

from homer_llm import compat
from homer_llm.config import GenerationConfig, HomerConfig
from homer_llm.generation import generate
from homer_llm.model import HomerModel
from homer_llm.prompt import (
    DOCUMENT_PLACEHOLDER,
    SINK_TOKENS,
    PromptParts,
    anchor_prefix,
    bos_prefix,
    split_chat,
    split_text,
)

from .perplexity import PPLSample
from .runner import Deadline, plain_context, score_continuation, score_plain
from .tasks import QASample

logger = logging.getLogger(__name__)


def import_bm25s():
    """The bm25s module, imported so that it leaves the GPU and the log alone.

    bm25s imports JAX when it is installed (for its top-k) and runs a JAX op at import; JAX then
    takes 75% of the GPU memory free at that moment (on an H100: 54 GiB held outside PyTorch, and
    the plain baselines ran out of memory). A few hundred passages need no GPU, so JAX is kept on the
    CPU unless the caller has configured it. bm25s also sets its logger to DEBUG at import.
    """
    import os
    import sys

    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s

    bm25_logger = logging.getLogger("bm25s")
    if bm25_logger.level == logging.DEBUG:  # every index build would otherwise reach a root handler
        bm25_logger.setLevel(logging.WARNING)
    return bm25s

ANSWER_ROOM = 64
"""Tokens of a length budget left for the answer: a length-L sample has an L - ANSWER_ROOM prompt."""

ALL_METHODS = ("homer", "homer-uncal", "homer-random", "homer-word", "homer-merged", "full", "truncate", "yarn",
               "ntk", "linear", "homer-yarn", "homer-focus", "homer-focus-leaf", "homer-ownleaf",
               "homer-ownleaf-uncal", "homer-ownleaf-random", "homer-hybrid", "homer-hybrid3", "bm25")


class NotApplicable(Exception):
    """The method has no meaning for this kind of sample (e.g. BM25 retrieval for perplexity)."""


@dataclass
class MethodResult:
    """What one method produced for one sample.

    Attributes:
        text: generated answer (QA) or "" (perplexity).
        nll: per-token NLL of the target (perplexity), else None.
        input_tokens: prompt tokens the method was given before any reduction.
        used_tokens: tokens the model actually attended to when answering (cache or prompt length).
        reused: the result was copied from another method that ran the very same computation
            (same model, RoPE setting and token ids: e.g. full, truncate, bm25 and factor-1 RoPE
            scaling all reduce to the plain model inside the window).
        needle_kept: HOMER methods on QA: the fraction of the answer's document tokens that
            survived into the final cache (best occurrence of each expected value, averaged over
            the values); None elsewhere.
    """

    text: str
    input_tokens: int
    used_tokens: int
    nll: list[float] | None = None
    reused: bool = False
    needle_kept: float | None = None


def token_offsets(tokenizer, document: str, context_ids: tuple[int, ...]) -> tuple[list[int], list[int]] | None:
    """Start and end character offsets of every token of ``context_ids`` (the tokenized ``document``);
    None when the tokenizer gives no character offsets or re-tokenizes differently."""
    try:
        enc = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    if tuple(enc["input_ids"]) != tuple(context_ids):
        return None
    return [a for a, _ in enc["offset_mapping"]], [b for _, b in enc["offset_mapping"]]


def value_token_spans(document: str, offsets: tuple[list[int], list[int]], value: str) -> list[range]:
    """Every occurrence of ``value`` in ``document`` as a whole word/number (not inside a longer
    one), as the range of token indices overlapping it (``offsets`` from :func:`token_offsets`)."""
    starts, ends = offsets
    out = []
    for match in re.finditer(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", document):
        # tokens overlapping [match.start(), match.end()): offsets are sorted by position
        tokens = range(bisect.bisect_right(ends, match.start()), bisect.bisect_left(starts, match.end()))
        if len(tokens):
            out.append(tokens)
    return out


def needle_kept(tokenizer, document: str, context_ids: tuple[int, ...], values, kept_ctx: set[int]) -> float | None:
    """Fraction of the answer's tokens kept: for every expected value, the best over its
    occurrences in ``document`` of (kept tokens / tokens overlapping it), averaged over values.

    ``kept_ctx``: indices into ``context_ids`` (the tokenized document) that are in the cache.
    None when the tokenizer gives no character offsets or re-tokenizes differently.
    """
    offsets = token_offsets(tokenizer, document, context_ids)
    if offsets is None:
        return None
    fractions = [max((sum(t in kept_ctx for t in tokens) / len(tokens)
                      for tokens in value_token_spans(document, offsets, value)), default=0.0)
                 for value in values]
    return sum(fractions) / len(fractions) if fractions else None


LAYOUTS = ("plain", "instructed")
"""Prompt layouts of a QA sample. ``plain``: the document, then the user's question, in one user turn,
as the LangChain and LlamaIndex adapters send it (``HomerModel.prepare_question`` with no instruction
and no answer prefix). ``instructed``: the task stated before the document and the answer's first
words given after the generation prompt (the layout of the passkey literature)."""


def build_parts(tokenizer, sample: QASample, document: str | None = None, layout: str = "plain") -> PromptParts:
    """Prompt parts for a QA sample in ``layout`` (see ``LAYOUTS``).

    With a chat template the texts form one user turn (and, ``instructed``, the answer prefix
    follows the generation prompt); without one, a plain-text layout is used.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    document = sample.document if document is None else document
    question = sample.question.strip()
    instructed = layout == "instructed"
    if getattr(tokenizer, "chat_template", None):
        head = f"{sample.instruction}\n\n" if instructed else ""
        content = f"{head}{DOCUMENT_PLACEHOLDER}\n\n{question}"
        parts = split_chat(tokenizer, [{"role": "user", "content": content}], document)
        if not instructed:
            return parts
        answer = tuple(tokenizer(sample.answer_prefix, add_special_tokens=False)["input_ids"])
        return PromptParts(parts.prefix, parts.context, parts.suffix + answer)
    if not instructed:
        return split_text(tokenizer, "", document, f"\n\nQuestion: {question}\nAnswer:")
    return split_text(tokenizer, f"{sample.instruction}\n\n", document,
                      f"\n\nQuestion: {question}\nAnswer: {sample.answer_prefix}")


class EvalModel:
    """The model under test and what every method shares: tokenizer, window, RoPE-scaled views."""

    def __init__(
        self, homer: HomerModel, ppl_recent: int = 0, ppl_append: int = 0, ppl_sink: int = SINK_TOKENS,
        layout: str = "plain", window: int | None = None,
    ) -> None:
        """``layout``: how every method lays out a QA prompt (see ``LAYOUTS``). ``window``: an emulated
        window shorter than the model's (None: the model's), the budget of truncation, BM25, the
        hybrid read and the RoPE factors, so a long-window model can be run in a short-window regime
        (HOMER's own chunk length is set separately). HOMER perplexity: ``ppl_recent`` keeps the last N context tokens whole as the suffix
        (seen, and averaged, by every chunk); ``ppl_append`` compresses all but the last N context
        tokens and runs those N whole after the compressed cache, like a continuation;
        ``ppl_sink``: without a BOS, the document's first N tokens are every chunk's shared prefix
        (``prompt.anchor_prefix``; 0: each chunk starts bare, as in the published method)."""
        if min(ppl_recent, ppl_append, ppl_sink) < 0:
            raise ValueError(f"ppl_recent, ppl_append and ppl_sink must be >= 0, got {ppl_recent}, {ppl_append}, {ppl_sink}")
        if ppl_recent and ppl_append:
            raise ValueError("choose one of ppl_recent and ppl_append")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        if window is not None and not 0 < window <= homer.window:
            raise ValueError(f"the emulated window must be in (0, {homer.window}], got {window}")
        self.homer = homer
        self.layout = layout
        self.ppl_recent, self.ppl_append, self.ppl_sink = ppl_recent, ppl_append, ppl_sink
        self.tokenizer = homer.tokenizer
        self.window = homer.window if window is None else window
        self._views: dict[tuple[str, float], object] = {}
        self._homers: dict[tuple, HomerModel] = {}
        self._results: dict[tuple, MethodResult] = {}

    def shared_result(self, key: tuple, compute) -> MethodResult:
        """``compute()`` once per identical plain computation ``key``; later callers get a copy."""
        if key in self._results:
            return replace(self._results[key], reused=True)
        if len(self._results) > 64:
            self._results.clear()
        result = compute()
        self._results[key] = result
        return result

    @property
    def parts(self) -> compat.ModelParts:
        return self.homer.parts

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def view(self, kind: str, factor: float):
        """A RoPE-scaled model sharing the weights (dynamic NTK is rebuilt every time: its rotary
        module keeps state from the longest sequence it has seen)."""
        if kind == "ntk":
            return compat.scaled_model(self.homer.model, kind, factor)
        key = (kind, factor)
        if key not in self._views:
            self._views[key] = compat.scaled_model(self.homer.model, kind, factor)
        return self._views[key]

    def homer_variant(
        self, pruning: str, rope: tuple[str, float] | None = None, calibration_samples: int | None = None,
        prune_unit: str = "token", reread_suffix: bool | None = None, focus_leaves: int = 0,
        merge_attention: str = "causal", focus_locator: str = "tree",
    ) -> HomerModel:
        """A HomerModel over the same weights with another pruning rule / unit / suffix handling
        (``reread_suffix`` None: the base's) / focus, or on a RoPE-scaled view with chunk_len
        scaled by the factor (and its own calibration table)."""
        base = self.homer
        reread = base.homer.reread_suffix if reread_suffix is None else reread_suffix
        key = (pruning, rope, calibration_samples, prune_unit, reread, focus_leaves, merge_attention, focus_locator)
        if key not in self._homers:
            if rope is None:
                self._homers[key] = base.with_config(replace(base.homer, pruning=pruning, prune_unit=prune_unit,
                                                             reread_suffix=reread, focus_leaves=focus_leaves,
                                                             merge_attention=merge_attention,
                                                             focus_locator=focus_locator))
            else:
                kind, factor = rope  # the library's HomerConfig.rope_scaling (a view named "<name>+yarn2")
                config = HomerConfig(chunk_len=int(base.chunk_len * factor), cache_len=None,
                                     warmup_layers=base.homer.warmup_layers, pruning=pruning, prune_unit=prune_unit,
                                     calibration_samples=calibration_samples or base.homer.calibration_samples,
                                     seed=base.homer.seed, reread_suffix=reread, rope_scaling=kind,
                                     rope_factor=factor, focus_leaves=focus_leaves,
                                     focus_margin=base.homer.focus_margin, merge_attention=merge_attention,
                                     focus_locator=focus_locator)
                self._homers[key] = base.with_config(config)
        return self._homers[key]

    def generation_config(self, sample: QASample) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=sample.max_new_tokens, stop=("\n",))


class Method:
    """Base: a named method over an EvalModel. ``growth`` is a LOWER bound on how its cost grows
    with length (time ~ length**growth), used only to skip runs certain to exceed the budget."""

    name = ""
    growth = 1.0

    def __init__(self, model: EvalModel) -> None:
        self.model = model

    def setup(self) -> None:
        """One-time work not counted in per-sample time (e.g. building a calibration table)."""

    def answer(self, sample: QASample, deadline: Deadline) -> MethodResult:
        raise NotImplementedError

    def score(self, sample: PPLSample, deadline: Deadline) -> MethodResult:
        raise NotApplicable(f"{self.name} does not score perplexity")


class HomerMethod(Method):
    growth = 1.0

    def __init__(
        self, model: EvalModel, name: str, pruning: str, rope: tuple[str, float] | None = None,
        calibration_samples: int | None = None, prune_unit: str = "token", reread_suffix: bool | None = None,
        focus_leaves: int = 0, merge_attention: str = "causal", focus_locator: str = "tree",
    ) -> None:
        """``reread_suffix``: None follows the run's HomerConfig."""
        super().__init__(model)
        self.name, self.pruning, self.rope = name, pruning, rope
        self.calibration_samples, self.prune_unit, self.reread_suffix = calibration_samples, prune_unit, reread_suffix
        self.focus_leaves, self.merge_attention, self.focus_locator = focus_leaves, merge_attention, focus_locator

    @property
    def hm(self) -> HomerModel:
        return self.model.homer_variant(self.pruning, self.rope, self.calibration_samples, self.prune_unit,
                                        self.reread_suffix, self.focus_leaves, self.merge_attention,
                                        self.focus_locator)

    def setup(self) -> None:
        self.hm.bias_table()

    def answer(self, sample, deadline):
        hm = self.hm
        parts = build_parts(hm.tokenizer, sample, layout=self.model.layout)
        context = hm.compress(parts, progress=deadline.progress)
        out = hm.generate(context, self.model.generation_config(sample))
        kept = None
        if context.kept is not None:
            p, c = len(parts.prefix), len(parts.context)
            kept_ctx = {i - p for i in context.kept.tolist() if p <= i < p + c}
            kept = needle_kept(hm.tokenizer, sample.document, parts.context, sample.expected, kept_ctx)
        return MethodResult(out.text, len(parts), context.cache_tokens, needle_kept=kept)

    def score(self, sample, deadline):
        if self.focus_leaves:
            raise NotApplicable(f"{self.name} reads the leaves a question points to; it does not score perplexity")
        hm = self.hm
        bos, ctx, sink = bos_prefix(hm.tokenizer), sample.context, self.model.ppl_sink
        # anchor_prefix: without a BOS, the document's first tokens are every chunk's shared prefix
        appended = min(self.model.ppl_append, len(ctx) - 1)
        if appended > 0:  # compress the past, then run the most recent tokens whole after it
            parts = anchor_prefix(PromptParts(bos, ctx[:-appended], ()), sink)
            context = hm.compress(parts, progress=deadline.progress)
            with hm.lock:
                nll = score_continuation(hm.parts, context, ctx[-appended:] + sample.target, deadline=deadline)
            n = len(sample.target)
            return MethodResult("", len(bos) + len(ctx), context.cache_tokens + appended, nll[-n:].tolist())
        recent = min(self.model.ppl_recent, len(ctx) - 1)
        if recent > 0:  # the most recent tokens stay whole, in every chunk, as the suffix
            parts = anchor_prefix(PromptParts(bos, ctx[:-recent], ctx[-recent:]), sink)
        else:  # the last context token becomes the query suffix
            parts = anchor_prefix(PromptParts(bos, ctx, ()), sink)
        context = hm.compress(parts, progress=deadline.progress)
        with hm.lock:
            nll = score_continuation(hm.parts, context, sample.target, deadline=deadline)
        return MethodResult("", len(parts), context.cache_tokens, nll.tolist())


class HybridMethod(HomerMethod):
    """The whole document compressed plus its best ``leaves`` leaves (as many as fit the window)
    read in full, in one cache (``homer_llm.hybrid``)."""

    def __init__(self, model: EvalModel, name: str, pruning: str, *, leaves: int = 1, **kwargs: Any) -> None:
        super().__init__(model, name, pruning, **kwargs)
        self.leaves = leaves

    def answer(self, sample, deadline):
        from ..hybrid import hybrid_context

        hm = self.hm
        parts = build_parts(hm.tokenizer, sample, layout=self.model.layout)
        context = hybrid_context(hm, parts, leaves=self.leaves, window=self.model.window)
        out = hm.generate(context, self.model.generation_config(sample))
        return MethodResult(out.text, len(parts), context.cache_tokens)

    def score(self, sample, deadline):
        raise NotApplicable(f"{self.name} reads the leaves a question points to; it does not score perplexity")


class PlainMethod(Method):
    """The plain model over a (possibly reduced) prompt; subclasses choose the prompt and RoPE."""

    growth = 1.0

    def model_parts(self, length: int) -> compat.ModelParts:
        """The model to run for a sample of ``length`` tokens (RoPE variants scale with it)."""
        return self.model.parts

    def reduce(self, parts: PromptParts, sample: QASample) -> PromptParts:
        return parts

    def rope_key(self, length: int) -> tuple:
        """Identity of the positional encoding used at ``length`` (for sharing identical runs)."""
        return ("default",)

    def answer(self, sample, deadline):
        base = self.model.homer
        parts = build_parts(base.tokenizer, sample, layout=self.model.layout)
        reduced = self.reduce(parts, sample)
        length = len(parts) + ANSWER_ROOM
        config = self.model.generation_config(sample)

        def compute() -> MethodResult:
            model_parts = self.model_parts(length)
            with base.lock:
                context = plain_context(model_parts, reduced.ids, deadline=deadline)
                out = generate(model_parts, base.tokenizer, context, config, base.eos_ids)
            return MethodResult(out.text, len(parts), len(reduced))

        key = ("qa", self.rope_key(length), reduced.ids, config)
        return replace(self.model.shared_result(key, compute), input_tokens=len(parts))

    def score(self, sample, deadline):
        base = self.model.homer
        ids = self.reduce_ids(bos_prefix(base.tokenizer) + sample.context, len(sample.target))
        length = len(sample.context) + len(sample.target)

        def compute() -> MethodResult:
            model_parts = self.model_parts(length)
            with base.lock:
                nll = score_plain(model_parts, ids, sample.target, deadline=deadline)
            return MethodResult("", length, len(ids) + len(sample.target), nll.tolist())

        key = ("ppl", self.rope_key(length), ids, sample.target)
        return replace(self.model.shared_result(key, compute), input_tokens=length)

    def reduce_ids(self, ids: tuple[int, ...], target_len: int) -> tuple[int, ...]:
        return ids


class FullMethod(PlainMethod):
    name = "full"


class TruncateMethod(PlainMethod):
    name = "truncate"
    growth = 0.0

    def reduce(self, parts, sample):
        room = self.model.window - ANSWER_ROOM - len(parts.prefix) - len(parts.suffix)
        if room < 1:
            raise ValueError(f"prompt affixes ({len(parts.prefix) + len(parts.suffix)} tokens) do not fit the window")
        return PromptParts(parts.prefix, parts.context[-room:], parts.suffix)

    def reduce_ids(self, ids, target_len):
        bos = bos_prefix(self.model.tokenizer)
        keep = self.model.window - target_len - len(bos)
        body = ids[len(bos):]
        return bos + body[-keep:] if keep > 0 else bos


class RopeMethod(PlainMethod):
    """RoPE scaling through transformers' config; factor = ceil(length / window) unless fixed."""

    def __init__(self, model: EvalModel, kind: str, factor: float | None = None) -> None:
        super().__init__(model)
        self.name, self.kind, self.factor = kind, kind, factor

    def scale_for(self, length: int) -> float:
        if self.factor is not None:
            return self.factor
        return float(max(1, math.ceil(length / self.model.window - 0.01)))

    def model_parts(self, length):
        factor = self.scale_for(length)
        if factor == 1.0:
            return self.model.parts  # factor 1 is the unscaled model (checked in the tests)
        return compat.model_parts(self.model.view(self.kind, factor))

    def rope_key(self, length):
        factor = self.scale_for(length)
        return ("default",) if factor == 1.0 else (self.kind, factor)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Bm25Method(PlainMethod):
    """Chunk retrieval: split the document into passages of about ``passage_tokens`` tokens, rank them
    by BM25 (bm25s) against the question, keep the best matching ones that fit the window, in
    document order. Used only when the document does not fit the window (otherwise: the plain model)."""

    name = "bm25"
    growth = 0.0

    def __init__(self, model: EvalModel, passage_tokens: int = 128) -> None:
        super().__init__(model)
        self.passage_tokens = passage_tokens
        self._counts: dict[str, int] = {}

    def _count(self, sentence: str) -> int:
        if sentence not in self._counts:
            self._counts[sentence] = self.model.count(" " + sentence)
        return self._counts[sentence]

    def passages(self, document: str) -> list[str]:
        """Consecutive sentences grouped into passages of at most ``passage_tokens`` (one long
        sentence makes its own passage)."""
        out: list[str] = []
        current: list[str] = []
        size = 0
        for sentence in (s for s in _SENTENCE_END.split(document) if s):
            cost = self._count(sentence)
            if current and size + cost > self.passage_tokens:
                out.append(" ".join(current))
                current, size = [], 0
            current.append(sentence)
            size += cost
        if current:
            out.append(" ".join(current))
        return out

    def rank(self, passages: list[str], query: str, budget: int) -> list[int]:
        """Indices (ascending) of the best BM25 passages for ``query`` that fit ``budget`` tokens."""
        bm25s = import_bm25s()
        tokens = bm25s.tokenize(passages, stopwords="en", show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        query_tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        scores = retriever.get_scores(query_tokens) if query_tokens else [0.0] * len(passages)
        # only passages that match the query are retrieved, best first (ties: the later passage);
        # padding the window with non-matching passages would only add distraction. With no match
        # at all, the last passages are kept (then this equals truncation).
        matched = [i for i in range(len(passages)) if float(scores[i]) > 0.0]
        pool = matched or list(range(len(passages)))
        ranked = sorted(pool, key=lambda i: (-float(scores[i]), -i))
        chosen, used = [], 0
        for i in ranked:
            cost = sum(self._count(s) for s in _SENTENCE_END.split(passages[i]) if s)
            if used + cost <= budget:
                chosen.append(i)
                used += cost
        return sorted(chosen)

    def select(self, document: str, query: str, budget: int) -> str:
        """The retrieved document: best-scoring passages within ``budget`` tokens, in document order."""
        passages = self.passages(document)
        return " ".join(passages[i] for i in self.rank(passages, query, budget))

    def reduce(self, parts, sample):
        budget = self.model.window - ANSWER_ROOM - len(parts.prefix) - len(parts.suffix)
        if len(parts.context) <= budget:
            return parts
        text = self.select(sample.document, sample.question, budget)
        reduced = build_parts(self.model.tokenizer, sample, text, layout=self.model.layout)
        # counting sentence by sentence can be off by a few tokens: never exceed the window
        return PromptParts(reduced.prefix, reduced.context[-budget:] if budget > 0 else (), reduced.suffix)

    def score(self, sample, deadline):
        raise NotApplicable("bm25 retrieval needs a question; it does not apply to perplexity")


def make_methods(
    model: EvalModel,
    names: list[str],
    *,
    rope_factor: float | None = None,
    homer_yarn_factor: float = 2.0,
    homer_yarn_calibration_samples: int | None = None,
    focus_leaves: int = 2,
) -> list[Method]:
    """Instantiate methods by name (see the module docstring).

    Args:
        rope_factor: fixed factor for yarn / ntk / linear (None: ceil(length / window) per length).
        homer_yarn_factor: YaRN factor of homer-yarn; its chunk_len is the base chunk_len times it.
        homer_yarn_calibration_samples: chunks for homer-yarn's own bias table (None: as homer).
        focus_leaves: leaves homer-focus reads plainly (``HomerConfig.focus_leaves``).
    """
    builders = {
        "homer": lambda: HomerMethod(model, "homer", "calibrated"),
        "homer-uncal": lambda: HomerMethod(model, "homer-uncal", "uncalibrated"),
        "homer-random": lambda: HomerMethod(model, "homer-random", "random"),
        "homer-word": lambda: HomerMethod(model, "homer-word", "calibrated", prune_unit="word"),
        "homer-merged": lambda: HomerMethod(model, "homer-merged", "calibrated", reread_suffix=False),
        "homer-yarn": lambda: HomerMethod(model, "homer-yarn", "calibrated", ("yarn", homer_yarn_factor),
                                          homer_yarn_calibration_samples),
        "homer-focus": lambda: HomerMethod(model, "homer-focus", "calibrated", focus_leaves=focus_leaves),
        "homer-focus-leaf": lambda: HomerMethod(model, "homer-focus-leaf", "calibrated", focus_leaves=focus_leaves,
                                                focus_locator="leaf"),
        "homer-ownleaf": lambda: HomerMethod(model, "homer-ownleaf", "calibrated", merge_attention="own-leaf"),
        "homer-ownleaf-uncal": lambda: HomerMethod(model, "homer-ownleaf-uncal", "uncalibrated",
                                                   merge_attention="own-leaf"),
        "homer-ownleaf-random": lambda: HomerMethod(model, "homer-ownleaf-random", "random",
                                                    merge_attention="own-leaf"),
        "homer-hybrid": lambda: HybridMethod(model, "homer-hybrid", "calibrated", merge_attention="own-leaf",
                                             focus_locator="leaf"),
        "homer-hybrid3": lambda: HybridMethod(model, "homer-hybrid3", "calibrated", leaves=3,
                                              merge_attention="own-leaf", focus_locator="leaf"),
        "full": lambda: FullMethod(model),
        "truncate": lambda: TruncateMethod(model),
        "yarn": lambda: RopeMethod(model, "yarn", rope_factor),
        "ntk": lambda: RopeMethod(model, "ntk", rope_factor),
        "linear": lambda: RopeMethod(model, "linear", rope_factor),
        "bm25": lambda: Bm25Method(model),
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(builders)}")
    return [builders[n]() for n in names]
