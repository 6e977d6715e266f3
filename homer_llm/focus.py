"""Focus: HOMER's tree as a locator, then a plain read of the parts of the document it points to.

On the default model at 8x its window (a 32-leaf tree) HOMER's compressed cache often holds the
whole answer and the model still cannot copy it: the kept tokens' upper-layer states were computed
after five merges, among the tokens of many leaves that share their position ids
(``docs/method.md``, focus). The same tree still knows WHERE the answer is: the question read
afresh after the pruned cache gives most of its upper-layer attention to the tokens of the leaf that
holds it. Focus ranks the leaves that way and runs the plain model over the prefix, the whole text
of the best leaves with a margin of their neighbours' text (in document order) and the question: a
fresh, full-resolution read of at most one window, located by the model's own attention over the
entire document.

That tree locator (:func:`leaf_attention`) favours the first leaves of each subtree; the default
locator, :func:`leaf_relevance`, ranks each leaf inside its own pass
(no merges run) by the question's attention share on the leaf's text.

Free functions; ``HomerModel.compress`` applies them when ``HomerConfig.focus_leaves > 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import compat
from .engine import CompressedContext, Progress, TreePass, drop_last, token_owners
from .prompt import PromptParts
from .schedule import Node, Plan
from .significance import calibrated_scores, last_query_logits
from .state import ChunkState


def cache_positions(plan: Plan, kept: torch.Tensor) -> torch.Tensor:
    """Position ids of the cache tokens from their prompt indices ([F] long -> [F] long).

    HOMER gives every leaf the ids prefix 0..P-1, context P.. from the leaf's start, suffix from
    P + nominal leaf length (HOMER.md 4), so a token's id follows from its prompt index and leaf.
    """
    P, C = plan.prefix_len, plan.context_len
    starts = torch.tensor([lo for lo, _ in plan.leaf_ranges()], dtype=torch.long)
    kept = kept.to(torch.long).cpu()
    leaf = token_leaves(plan, kept)
    in_leaf = kept - starts[leaf.clamp(min=0)]  # P + offset inside the leaf
    suffix_pos = P + plan.nominal_leaf + (kept - P - C)
    return torch.where(kept < P, kept, torch.where(leaf >= 0, in_leaf, suffix_pos))


def token_leaves(plan: Plan, kept: torch.Tensor) -> torch.Tensor:
    """Leaf index of every cache token ([F] long), -1 for prefix and suffix tokens."""
    return token_owners(plan, kept.to(torch.long).cpu()).clamp(min=-1)


@torch.inference_mode()
def question_scores(
    parts: compat.ModelParts,
    plan: Plan,
    context: CompressedContext,
    suffix: torch.Tensor,
    bias: torch.Tensor | None,
    layers: Sequence[int],
    cached_suffix: int | None = None,
) -> torch.Tensor:
    """Significance of every cached token for the question read afresh: [len(layers), F - S] float32.

    The cache's last S tokens (S = ``cached_suffix``, default ``len(suffix)``: the prompt's own
    suffix) are dropped and ``suffix`` ([Q] ids; any text, e.g. a neutral question) is run after the
    rest at the positions that follow it; at each of ``layers`` its last token's significance of each
    cached token is the pruning rule's (max over heads of the logit, minus the calibration bias at
    that distance; ``bias`` None: uncalibrated). ``context.kept`` must map the cache to prompt
    indices (it gives the position ids).
    """
    if context.kept is None:
        raise ValueError("question_scores needs a compressed context that tracks its tokens (kept)")
    S = int(suffix.numel()) if cached_suffix is None else cached_suffix
    body = drop_last(context.kv, S)
    positions = cache_positions(plan, context.kept[:-S])
    start = plan.next_position - S
    cache = compat.cache_from_kv(body)
    hidden = compat.embed(parts, suffix)
    Q = int(suffix.numel())
    pos_emb = compat.position_embeddings(parts, hidden, torch.arange(start, start + Q))
    mask = compat.attention_mask(parts, Q, int(body[0][0].shape[2]), hidden.dtype, hidden.device)
    cos, sin = pos_emb
    wanted, rows = set(layers), {}
    last = max(wanted)
    for index in range(last + 1):
        if index in wanted:
            query = compat.last_query(parts, index, hidden[:, -1:], (cos[:, -1:], sin[:, -1:]))
            logits = last_query_logits(query, body[index][0], compat.attention_scaling(parts, index))
            rows[index] = calibrated_scores(logits, positions, start + Q - 1,
                                            None if bias is None else bias[index]).float().cpu()
        if index < last:
            hidden, _ = compat.run_layer(parts, index, hidden, pos_emb, mask, past=cache)
    return torch.stack([rows[index] for index in layers])


def leaf_attention(
    parts: compat.ModelParts,
    plan: Plan,
    context: CompressedContext,
    suffix: torch.Tensor,
    bias: torch.Tensor | None,
    cached_suffix: int | None = None,
) -> torch.Tensor:
    """How much attention the question read afresh gives each leaf: [N] float32.

    At every layer of the upper half, :func:`question_scores` are turned into a softmax over the
    cached tokens (prefix included); the shares of each leaf's surviving tokens are summed over
    those layers. ``cached_suffix``: as in :func:`question_scores` (another question after the
    same cache).
    """
    upper = range(parts.num_layers // 2, parts.num_layers)
    S = int(suffix.numel()) if cached_suffix is None else cached_suffix
    scores = question_scores(parts, plan, context, suffix, bias, upper, cached_suffix=S)
    total = torch.softmax(scores, dim=1).sum(0)
    owner = token_leaves(plan, context.kept[:-S])
    ctx = owner >= 0
    return torch.zeros(plan.num_leaves).index_add_(0, owner[ctx], total[ctx])


def context_share(parts: compat.ModelParts, index: int, hidden_last: torch.Tensor, pos_emb: compat.KV,
                  keys: torch.Tensor, lo: int, hi: int) -> float:
    """Share of one query token's attention that falls on tokens [lo, hi) of a node at one layer.

    The softmax runs over the max-over-heads logits (:func:`last_query_logits`) of every key of
    the node; no calibration: every leaf that is compared has the same prefix and suffix at the
    same position ids, so the distance bias is the same in each, and subtracting it (as the
    pruning rule does) lowers the rank of keys at a leaf's very end, right before the question.

    Args:
        hidden_last: [1, 1, hidden] the query token's input to layer ``index``.
        pos_emb: cos/sin ([1, m, d] each) of tokens ending with the query token (the last row is used).
        keys: [1, n_kv, n, d] that layer's rotated keys.
    """
    cos, sin = pos_emb
    query = compat.last_query(parts, index, hidden_last, (cos[:, -1:], sin[:, -1:]))
    logits = last_query_logits(query, keys, compat.attention_scaling(parts, index))
    return float(torch.softmax(logits, 0)[lo:hi].sum())


def upper_leaf_layers(node: Node) -> range:
    """The layers a leaf's relevance is read at: the upper half of the leaf's own layers."""
    return range(node.layer_end // 2, node.layer_end)


class _LeafLocator(TreePass):
    """Runs only the leaves of the tree (unpruned), recording how strongly the question points into each."""

    def __init__(self, parts: compat.ModelParts, plan: Plan, ids: torch.Tensor, progress: Progress | None) -> None:
        super().__init__(parts, plan, ids, None, None, progress)
        self.total = plan.leaf_passes
        self.sums = torch.zeros(plan.num_leaves, dtype=torch.float64)

    def observe(self, node: Node, index: int, hidden_last: torch.Tensor, kv: compat.KV, state: ChunkState,
                pos_emb: compat.KV) -> None:
        upper = upper_leaf_layers(node)
        if index in upper:
            share = context_share(self.parts, index, hidden_last, pos_emb, kv[0], state.prefix_len,
                                  state.length - state.suffix_len)
            self.sums[node.leaf_start] += share / len(upper)

    def prune_node(self, state: ChunkState, node: Node, hidden_last: torch.Tensor, pos_emb: compat.KV) -> ChunkState:
        return state  # the leaf is only read, never merged: its pruning would be wasted work

    def relevance(self) -> torch.Tensor:
        for node in self.plan.nodes():
            if node.is_leaf:
                self.run_layers(self.leaf_input(node), node)
        return self.sums.float()


@torch.inference_mode()
def leaf_relevance(parts: compat.ModelParts, plan: Plan, ids: torch.Tensor,
                   progress: Progress | None = None) -> torch.Tensor:
    """How strongly the question points into each leaf, read inside the leaf itself: [N] float32.

    Every leaf ``p + x_i + s`` of ``plan`` (``ids``: [P + C + S] long) runs through its own layers
    as in HOMER's tree (no merges are run); at each layer of the upper half of those, the question's
    last token's attention (softmax of the max-over-heads logits over the leaf's tokens) is summed
    over the leaf's context tokens, and the leaf gets that share averaged over the layers. Every
    leaf has the same prefix and suffix at the same position ids and no sibling before it, so the
    shares compare across leaves; the tree's own attention after merges favours the first leaves
    of each subtree (``docs/method.md``, focus). ``progress(done, total)`` counts the leaves' layer passes.
    """
    return _LeafLocator(parts, plan, ids, progress).relevance()


def choose_leaves(plan: Plan, attention: torch.Tensor, k: int, budget: int, *, cap: int | None = None,
                  margin: int = 0) -> list[int]:
    """The ``k`` leaves with the most attention that fit ``budget`` context tokens, in document order.

    Leaves are taken best first; one that would overflow the budget is skipped, and so is one
    that would take the leaves, with ``margin`` tokens on each side, past ``cap`` tokens (None: no
    cap), and one whose attention is not above 0 (the lexical locator's unmatched leaves; the
    attention locators' shares are always above 0). At least the best leaf is returned (a leaf is
    at most one chunk, which fits any window).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = torch.argsort(attention, descending=True, stable=True).tolist()
    chosen, used = [], 0
    for leaf in order:
        size = plan.leaf_sizes[leaf]
        within_cap = cap is None or used + size + 2 * margin * (len(chosen) + 1) <= cap
        if not chosen or (used + size <= budget and within_cap and float(attention[leaf]) > 0):
            chosen.append(leaf)
            used += size
        if len(chosen) == k:
            break
    return sorted(chosen)


def focus_spans(plan: Plan, leaves: Sequence[int], margin: int, budget: int) -> list[tuple[int, int]]:
    """Context spans [lo, hi) to read for ``leaves``, in document order.

    Every leaf is widened by the same number of tokens on each side: ``margin``, or less where the
    leaves and their margins would pass ``budget`` tokens in all; spans are clipped to the context
    and overlapping or touching ones merged. Why: the leaf boundaries are arbitrary cuts, so the
    sentence a question is about may begin in one leaf and end in the next (margin 0: the leaves).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not leaves:
        raise ValueError("focus_spans needs at least one leaf")
    ranges = plan.leaf_ranges()
    spans = [ranges[leaf] for leaf in sorted(set(leaves))]
    room = budget - sum(hi - lo for lo, hi in spans)
    pad = max(0, min(margin, room // (2 * len(spans))))
    merged: list[tuple[int, int]] = []
    for lo, hi in ((max(0, lo - pad), min(plan.context_len, hi + pad)) for lo, hi in spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def focused_parts(parts: PromptParts, spans: Sequence[tuple[int, int]]) -> tuple[PromptParts, torch.Tensor]:
    """Prefix + the context text of ``spans`` ([lo, hi) context indices, document order) + suffix,
    and for every token of that prompt its index in the original prompt ([n] long)."""
    P, C = len(parts.prefix), len(parts.context)
    index = list(range(P))
    for lo, hi in spans:
        index.extend(range(P + lo, P + hi))
    index.extend(range(P + C, P + C + len(parts.suffix)))
    text = tuple(t for lo, hi in spans for t in parts.context[lo:hi])
    return PromptParts(parts.prefix, text, parts.suffix), torch.tensor(index, dtype=torch.long)
