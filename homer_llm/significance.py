"""Token significance and the pruning rule (HOMER.md section 6). Free functions, float32."""

from __future__ import annotations

import torch


def last_query_logits(query: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """Raw attention logits of one query against every key, max over query heads.

    GQA-aware: query head h reads key head h // (n_h / n_kv). Only one query row is formed, never
    the full attention matrix.

    Args:
        query: [n_h, d] rotated query of the node's last token.
        keys: [1, n_kv, n, d] rotated keys of the node's tokens at the same layer.
        scaling: the attention's softmax scale (usually d ** -0.5).
    Returns:
        [n] float32: a_j = max_h (q_h . k_j) * scaling.
    """
    n_h, d = query.shape
    n_kv = keys.shape[1]
    q = query.float().view(n_kv, n_h // n_kv, d)  # [n_kv, g, d]
    k = keys[0].float()  # [n_kv, n, d]
    logits = torch.einsum("kgd,knd->kgn", q, k) * scaling  # [n_kv, g, n]
    return logits.amax(dim=(0, 1))


def calibrated_scores(
    logits: torch.Tensor, positions: torch.Tensor, query_position: int, bias_row: torch.Tensor | None
) -> torch.Tensor:
    """s_j = a_j - B[l][pos(last) - pos(j)]; ``bias_row`` [M] is B[l] (None: uncalibrated)."""
    if bias_row is None:
        return logits
    distance = (query_position - positions).clamp(min=0, max=bias_row.numel() - 1)
    return logits - bias_row.to(logits.device)[distance.to(logits.device)]


def pool_by_span(scores: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Every token's score replaced by the highest score in its span.

    Args:
        scores: [n] significance.
        spans: [n] span id of each token (any integers; equal ids form one span).
    Returns:
        [n] pooled scores (same dtype and device as ``scores``).
    """
    _, local = torch.unique(spans.to(scores.device), return_inverse=True)
    best = torch.full((int(local.max()) + 1,), float("-inf"), dtype=scores.dtype, device=scores.device)
    best = best.scatter_reduce(0, local, scores, reduce="amax")
    return best[local]


def keep_indices(
    scores: torch.Tensor, prefix_len: int, suffix_len: int, keep_ctx: int, tiebreak: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices of the tokens to keep, in their original order.

    Prefix and suffix tokens are always kept; of the context tokens in between, the ``keep_ctx``
    with the highest scores survive.

    Args:
        scores: [n] significance of every token of the node.
        tiebreak: [n] optional second key among equal ``scores`` (e.g. a token's own score when
            ``scores`` are pooled over spans): higher is kept first.
    Returns:
        [prefix_len + keep_ctx + suffix_len] long indices, ascending.
    """
    n = scores.numel()
    ctx = n - prefix_len - suffix_len
    device = scores.device
    if keep_ctx >= ctx:
        return torch.arange(n, device=device)
    body = scores[prefix_len : prefix_len + ctx]
    if tiebreak is None:
        top = torch.topk(body, keep_ctx, sorted=False).indices
    else:  # lexicographic (scores, tiebreak), both descending: two stable sorts
        order = torch.sort(tiebreak[prefix_len : prefix_len + ctx], descending=True, stable=True).indices
        order = order[torch.sort(body[order], descending=True, stable=True).indices]
        top = order[:keep_ctx]
    kept_ctx = torch.sort(top).values + prefix_len
    return torch.cat(
        [
            torch.arange(prefix_len, device=device),
            kept_ctx,
            torch.arange(n - suffix_len, n, device=device),
        ]
    )


def random_scores(n: int, generator: torch.Generator) -> torch.Tensor:
    """Scores for the random-pruning ablation: i.i.d. uniform, reproducible through ``generator``."""
    return torch.rand(n, generator=generator)
