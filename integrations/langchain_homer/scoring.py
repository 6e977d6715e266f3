"""Scoring fixed continuations after a compressed context (used to pick a forced tool's name).

When a call is forced among several tools, the model could write any name; instead each bound
name is scored by the model itself (mean log-probability of its tokens after the call's opening)
and the most likely one is written for it. This is exact constrained decoding over the names,
done with ``homer_llm.generation.extend_context`` one token at a time (shared prefixes once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from homer_llm.generation import extend_context


def continuation_logprobs(engine, context, continuations: Sequence[Sequence[int]]) -> list[list[float]]:
    """Log-probabilities of each token of each continuation, given ``context``.

    Args:
        engine: the ``HomerModel`` that produced ``context``.
        context: a ``CompressedContext`` (its ``last_logits`` [vocab] predict the next token).
        continuations: token id sequences (each non-empty).

    Returns:
        One list per continuation: log p(token_i | context, tokens_<i).
    """
    contexts = {(): context}
    out: list[list[float]] = []
    with engine.lock:
        for ids in continuations:
            if not ids:
                raise ValueError("continuations must be non-empty token sequences")
            scores = []
            for i, token in enumerate(ids):
                prefix = tuple(ids[:i])
                if prefix not in contexts:
                    contexts[prefix] = extend_context(engine.parts, contexts[prefix[:-1]], [prefix[-1]])
                logits = contexts[prefix].last_logits.float()
                scores.append(float(torch.log_softmax(logits, dim=-1)[token]))
            out.append(scores)
    return out


def choose(engine, context, texts: Sequence[str]) -> int:
    """Index of the text the model finds most likely after ``context`` (mean token log-prob)."""
    ids = [list(engine.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    scores = continuation_logprobs(engine, context, ids)
    means = [sum(s) / len(s) for s in scores]
    return max(range(len(texts)), key=lambda i: means[i])
