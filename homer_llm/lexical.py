"""Lexical locator: the leaves ranked by how well their text matches the question's words (BM25).

The attention locators (``homer_llm.focus``) rank leaves by what the model attends to, which
tells the leaf holding a fact from its neighbours but leaves small margins between leaves that
hold look-alike facts ("the pass key is ...", "the door code is ...", "the locker number is ...",
docs/agent.md). Matching the question's own tokens separates those: the door-code question shares
" door" and " code" with one leaf only. It costs no model pass, so a cached document's leaves are
ranked for free. It is blind to a question worded unlike the text it asks about; leaves with no
word of the question in common score 0.

Scores are Okapi BM25 (Robertson & Zaragoza, 2009) over token ids, each leaf a document and the
question's distinct tokens the query; a token every leaf holds weighs almost nothing, so the chat
template's and the filler's tokens do not count. Scores below ``FLOOR`` times the best are set to
0, and ``focus.choose_leaves`` reads a second or later leaf only when its score is above 0: a
question that points at one leaf gets one. Written out here rather than through bm25s (the eval's
BM25 baseline): that is an optional extra, tokenises words rather than the model's ids, and
imports JAX where it is installed.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import torch

from .schedule import Plan

logger = logging.getLogger(__name__)

K1 = 1.2
"""BM25's term-frequency saturation."""

B = 0.75
"""BM25's length normalisation."""

FLOOR = 0.5
"""Leaves scoring under this share of the best score get 0 (and so are not read after the best)."""


def bm25_scores(documents: Sequence[Sequence[int]], query: Sequence[int], *, k1: float = K1,
                b: float = B) -> torch.Tensor:
    """Okapi BM25 of ``query``'s distinct tokens in each of ``documents`` (token id lists): [N] float32."""
    n = len(documents)
    if n == 0:
        raise ValueError("bm25_scores needs at least one document")
    counts = [Counter(doc) for doc in documents]
    lengths = [len(doc) for doc in documents]
    average = max(1e-9, sum(lengths) / n)
    scores = torch.zeros(n)
    for token in set(query):
        df = sum(1 for c in counts if token in c)
        if df == 0:
            continue
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        for i, c in enumerate(counts):
            tf = c.get(token, 0)
            if tf:
                scores[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[i] / average))
    return scores


def lexical_relevance(plan: Plan, context: Sequence[int], question: Sequence[int], *,
                      floor: float = FLOOR) -> torch.Tensor:
    """The leaves of ``plan`` ranked by BM25 against ``question`` (token ids; the prompt's suffix):
    [N] float32, scores under ``floor`` times the best set to 0. ``context``: the document's ids."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    leaves = [context[lo:hi] for lo, hi in plan.leaf_ranges()]
    scores = bm25_scores(leaves, question)
    best = float(scores.max())
    if best <= 0:
        logger.warning("lexical locator: no leaf shares a token with the question; reading the first leaf")
        return scores
    return torch.where(scores >= floor * best, scores, torch.zeros_like(scores))
