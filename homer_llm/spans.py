"""Word spans of a token sequence, for span-aware pruning (``HomerConfig.prune_unit="word"``).

HOMER prunes single tokens. Many tokenizers split numbers digit by digit (SmolLM2, Llama-3 in
groups of three) and rare words into several pieces, so token-level pruning can keep "7436" of
"7436714" and drop the rest, which no later layer can repair. With word spans, a token's score is
the best score of its span, so a span survives or goes as a whole (only the one span at the
keep/drop boundary can be cut).

A span is a maximal run of tokens with no whitespace between them whose characters are all
letters, or all digits; any other character (punctuation, symbols) ends a span and forms its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_LETTER, _DIGIT, _OTHER = 0, 1, 2


def _kind(ch: str) -> int:
    if ch.isdigit():
        return _DIGIT
    # U+FFFD: a piece of a multi-byte character (byte-level BPE); it joins its neighbours
    if ch.isalpha() or ch == "\ufffd":
        return _LETTER
    return _OTHER


def token_pieces(tokenizer, ids: Sequence[int]) -> dict[int, str]:
    """The text of every distinct id in ``ids``, decoded on its own (one decode per distinct id)."""
    return {i: tokenizer.decode([i]) for i in set(ids)}


def word_spans(tokenizer, ids: Sequence[int]) -> torch.Tensor:
    """Span id of every token: [n] long, non-decreasing, starting at 0.

    A new span starts at a token whose text is empty or starts with whitespace, after a token that
    ends with whitespace, and wherever the character kind (letter / digit / other) changes or is
    "other" on either side of the boundary.
    """
    pieces = token_pieces(tokenizer, ids)
    out = torch.empty(len(ids), dtype=torch.long)
    span = -1
    prev_end: str | None = None
    for j, token in enumerate(ids):
        text = pieces[token]
        first = text[:1]
        if (
            prev_end is None
            or not text
            or first.isspace()
            or prev_end.isspace()
            or _kind(first) != _kind(prev_end)
            or _kind(first) == _OTHER
        ):
            span += 1
        out[j] = span
        prev_end = text[-1:] or None
    return out
