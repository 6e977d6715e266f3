"""Hybrid read: the whole document compressed by HOMER, plus the leaves the question points to, read in full.

HOMER's compressed cache keeps every part of the document in a little space but at reduced
resolution; focus (``homer_llm.focus``) reads the best leaves at full resolution but drops the rest.
The hybrid keeps both in one cache, in the spirit of the compress-gather-recompute idea of REFORM
(Song et al., 2025, arXiv 2506.01215):

    [prefix][HOMER's pruned context: the whole document][the chosen leaves' text, read plainly][question]

1. The HOMER tree runs over the prompt as usual (chunks of at most ``chunk_len``; see below).
2. The leaves are ranked by the locator of ``HomerConfig.focus_locator`` (``leaf``: the question's
   attention share inside each leaf's own pass, ``homer_llm.focus.leaf_relevance``; ``tree``: the
   question read after the compressed cache, ``homer_llm.focus.leaf_attention``).
3. The compressed cache's suffix is dropped; the chosen leaves' text (widened by a margin) runs
   through every layer after the compressed cache at the position ids that follow the tree's
   context, then the question again after it. The answer is decoded from there.

Positions: the tree's tokens use ids below P + c + S (c the nominal leaf length), the gathered text
continues at P + c, so everything stays inside the model's window when c + gathered + answer room
fit. ``hybrid_chunk_len`` picks the largest chunk (a multiple of 64, the same for every prompt) for
which one leaf plus its margins does.

Free functions over a ``HomerModel``. ``HomerConfig(focus_leaves=k, focus_keep_document=True)`` makes it
the engine's read path (``HomerModel.compress`` calls :func:`hybrid_context`); ``evaluation.methods``
exposes it as ``homer-hybrid``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from .engine import CompressedContext, Progress, append_tokens, drop_last
from .focus import choose_leaves, focus_spans, leaf_attention, leaf_relevance
from .lexical import lexical_relevance
from .prompt import PromptParts
from .schedule import Plan

logger = logging.getLogger(__name__)

ANSWER_ROOM = 256
"""Positions left free after the question for the answer."""

MORE_LEAVES_SHARE = 0.5
"""A second or later leaf is read only while the leaves read, with their margins, take at most
this share of the window. On the 135M default model (8k window) reading up to three leaves, two
of the ~2,000-token leaves of a 16k/32k-token document, was right on 4 of 14 plain needle
questions where one leaf was right on 6 (the other pairs agreed; docs/read-paths.md); on
Qwen2.5-Coder-0.5B (32k window) three leaves of a 32k-token document were needed to tell three
look-alike facts apart. Half the window gives one leaf on the first and three on the second."""


def hybrid_chunk_len(window: int, chunk_len: int, margin: int, answer_room: int = ANSWER_ROOM) -> int:
    """The chunk length of the hybrid's tree: ``chunk_len``, or less where one leaf and its two margins
    could not be read after the tree's context and still leave ``answer_room`` positions in ``window``.

    A leaf holds c = chunk - P - S context tokens and the gathered text starts at position P + c, so
    the condition is P + c + (c + 2 margin) + S + answer_room <= window, i.e.
    2 chunk - P - S + 2 margin + answer_room <= window. It is taken for P = S = 0, so the chunk
    length does not depend on the prompt (one calibration table serves every prompt), and rounded
    down to a multiple of 64.
    """
    bound = (window - 2 * margin - answer_room) // 2 // 64 * 64
    if bound < 64:
        raise ValueError(f"a window of {window} tokens cannot hold a hybrid read with a margin of {margin} "
                         f"and {answer_room} positions for the answer")
    return min(chunk_len, bound)


@torch.inference_mode()
def hybrid_context(hm, parts: PromptParts, *, leaves: int = 1, margin: int | None = None,
                   answer_room: int = ANSWER_ROOM, window: int | None = None,
                   progress: Progress | None = None) -> CompressedContext:
    """The hybrid cache for ``parts`` on ``hm`` (a ``homer_llm.HomerModel``).

    Args:
        leaves: how many leaves to read in full (more only where they fit the window).
        margin: tokens of each neighbour read on each side of a chosen leaf (None:
            ``hm.homer.focus_margin``).
        answer_room: positions kept free for the answer.
        window: the positions the read may use (None: the model's window; less emulates a
            shorter-window model).
        progress: called as ``progress(done, total)`` over the tree's layer passes, then once more
            when the locator and the plain read of the leaves are done (preceded, the first time a
            model and chunk length are used, by the calibration table's build with its own total).

    A prompt that fits one chunk takes the plain path (``hm.compress``), as everywhere else.
    """
    if leaves < 1:
        raise ValueError(f"leaves must be >= 1, got {leaves}")
    margin = hm.homer.focus_margin if margin is None else margin
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    window = hm.window if window is None else window
    if not 0 < window <= hm.window:
        raise ValueError(f"window must be in (0, {hm.window}], got {window}")
    tree = tree_engine(hm, hybrid_chunk_len(window, hm.chunk_len, margin, answer_room))
    plan = tree.plan(parts)
    total = plan.layer_passes + 1
    if plan.num_leaves > 1:  # a first build of the calibration table reports its own passes first
        tree.bias_table(progress)
    compressed = tree.compress(parts, progress=None if progress is None else lambda d, t: progress(d, t + 1))
    if plan.num_leaves == 1:
        if progress is not None:
            progress(total, total)
        return compressed
    started = time.perf_counter()
    with tree.lock:
        if hm.homer.focus_locator == "lexical":
            relevance = lexical_relevance(plan, parts.context, parts.suffix)
        elif hm.homer.focus_locator == "leaf":
            relevance = leaf_relevance(tree.parts, plan, torch.tensor(parts.ids, dtype=torch.long))
        else:
            relevance = tree_relevance(tree, parts, plan, compressed)
        out = read_leaves_after(tree.parts, parts, plan, compressed, relevance, leaves=leaves, margin=margin,
                                answer_room=answer_room, window=window)
    if progress is not None:
        progress(total, total)
    return replace(out, stats=replace(out.stats, seconds=out.stats.seconds + time.perf_counter() - started))


def tree_engine(hm, chunk: int):
    """The engine the hybrid's tree runs on: ``hm``'s settings with chunks of ``chunk`` tokens, no
    focus, and no reread of the question (the tree's suffix is dropped before the leaves are read)."""
    return hm.with_config(replace(hm.homer, chunk_len=chunk, cache_len=min(hm.homer.cache_len or chunk, chunk),
                                  focus_leaves=0, focus_keep_document=False, reread_suffix=False))


def tree_relevance(tree, parts: PromptParts, plan: Plan, compressed: CompressedContext) -> torch.Tensor:
    """The tree locator's ranking ([N], ``focus.leaf_attention``): the question read afresh after
    ``compressed``, the tree's cache of ``parts`` on ``tree`` (its :func:`tree_engine`)."""
    return leaf_attention(tree.parts, plan, compressed, torch.tensor(parts.suffix, dtype=torch.long),
                          tree.bias_table())


def leaves_to_read(plan: Plan, relevance: torch.Tensor, leaves: int, margin: int, budget: int,
                   window: int) -> list[int]:
    """The leaves the hybrid reads in full, in document order: the best by ``relevance`` ([N]),
    up to ``leaves`` of them that fit ``budget`` tokens, a second or later one only while they
    take, with ``margin`` tokens on each side, at most ``MORE_LEAVES_SHARE`` of ``window``
    (``focus.choose_leaves``). The best leaf is always read."""
    cap = min(budget, int(window * MORE_LEAVES_SHARE))
    return choose_leaves(plan, relevance, leaves, budget, cap=cap, margin=margin)


def read_leaves_after(model_parts, parts: PromptParts, plan: Plan, compressed: CompressedContext, relevance: torch.Tensor,
                      *, leaves: int, margin: int, answer_room: int, window: int) -> CompressedContext:
    """The hybrid's last step: the ``leaves`` best leaves by ``relevance`` ([N]) read in full after
    ``compressed`` (the tree's cache of ``parts`` under ``plan``, its suffix dropped), then the
    suffix again; positions continue at P + c. ``model_parts``: ``HomerModel.parts``."""
    S = len(parts.suffix)
    start = plan.next_position - S  # P + c: right after the tree's context ids
    budget = window - start - S - answer_room
    chosen = leaves_to_read(plan, relevance, leaves, margin, budget, window)
    spans = focus_spans(plan, chosen, margin, budget)
    gathered = [t for lo, hi in spans for t in parts.context[lo:hi]]
    if len(gathered) > budget:  # a single leaf wider than the budget: keep its start
        gathered = gathered[:budget]
    logger.info("hybrid: leaves %s of %d, spans %s, %d tokens read after a %d-token compressed cache",
                chosen, plan.num_leaves, spans, len(gathered), compressed.cache_tokens - S)
    new_ids = torch.tensor(gathered + list(parts.suffix), dtype=torch.long)
    kv, logits = append_tokens(model_parts, drop_last(compressed.kv, S), new_ids, start)
    stats = replace(compressed.stats, cache_tokens=int(kv[0][0].shape[2]))
    return CompressedContext(kv, start + len(new_ids), logits, stats)
