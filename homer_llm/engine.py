"""The hierarchical pass: prompt parts in, compact standard KV cache out (HOMER.md 3-11).

The tree is walked depth-first (post-order): a node's left subtree is finished and pruned before
its right subtree starts, so at most one finished sibling per level is alive and the live K/V
grows with log(length), not length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import compat
from .schedule import Node, Plan
from .significance import calibrated_scores, keep_indices, last_query_logits, pool_by_span, random_scores
from .state import ChunkState, merge, prune

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as progress(done, total) in layer-passes of work."""


@dataclass(frozen=True)
class CompressionStats:
    """What one compression did.

    Attributes:
        input_tokens: P + C + S.
        cache_tokens: F, tokens in the final cache.
        tree_height, num_leaves: H and N.
        peak_kv_bytes: most K/V bytes alive at once during the pass (all nodes held together).
        seconds: wall time of the pass.
    """

    input_tokens: int
    cache_tokens: int
    tree_height: int
    num_leaves: int
    peak_kv_bytes: int
    seconds: float


@dataclass(frozen=True)
class CompressedContext:
    """The result handed to generation.

    Attributes:
        kv: per layer (K, V), each [1, n_kv, F, d]; never modified (generation copies on append).
        next_position: position id of the first generated token.
        last_logits: [vocab] float32 logits at the last suffix token.
        stats: CompressionStats.
        kept: [F] long index in the prompt (prefix + context + suffix ids) of each cache token, in
            cache order; None where not tracked (plain prefills, extended or reloaded caches).
            Tells which document tokens survived pruning (e.g. whether a needle did).
    """

    kv: tuple[compat.KV, ...]
    next_position: int
    last_logits: torch.Tensor
    stats: CompressionStats
    kept: torch.Tensor | None = None

    @property
    def cache_tokens(self) -> int:
        return int(self.kv[0][0].shape[2])

    def to_cache(self):
        """A fresh transformers DynamicCache over these K/V (appending to it leaves self intact)."""
        return compat.cache_from_kv(self.kv)

    def kv_bytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class TreePass:
    """One depth-first compression: holds what every node needs, and the live-memory bookkeeping.

    Extension point: a subclass may override :meth:`leaf` to produce a leaf's pruned state some
    other way (``homer_llm.reuse`` rebuilds leaves from cached question-independent states); the
    merge order, the upper levels and the memory accounting stay the engine's. :meth:`observe`
    sees every layer pass (probes record the question's attention inside each leaf with it).
    """

    def __init__(
        self,
        parts: compat.ModelParts,
        plan: Plan,
        ids: torch.Tensor,
        bias: torch.Tensor | None,
        random_generator: torch.Generator | None,
        progress: Progress | None,
        spans: torch.Tensor | None = None,
        reread: bool = False,
        own_leaf: bool = False,
    ) -> None:
        """``spans``: [P + C + S] word-span id of every prompt token (``homer_llm.spans``), or None
        to prune token by token. ``reread``: read the suffix afresh after the tree (see :meth:`finish`).
        ``own_leaf``: in merged nodes, context tokens attend only to the prefix and their own leaf
        (see :meth:`node_mask`)."""
        self.parts, self.plan, self.ids, self.reread, self.own_leaf = parts, plan, ids, reread, own_leaf
        self.bias, self.random_generator, self.progress = bias, random_generator, progress
        if spans is not None and spans.shape != ids.shape:
            raise ValueError(f"spans must have the shape of ids {tuple(ids.shape)}, got {tuple(spans.shape)}")
        self.spans = spans
        self.total = plan.layer_passes
        self.done = 0
        self.waiting: list[ChunkState] = []  # finished left siblings, one per level at most
        self.peak_kv = 0

    def leaf_input(self, node: Node) -> ChunkState:
        """Token ids -> embeddings for leaf ``p + x_i + s`` with HOMER's reused position ids."""
        plan = self.plan
        P, C, S = plan.prefix_len, plan.context_len, plan.suffix_len
        start, end = plan.leaf_ranges()[node.leaf_start]
        ids = self.ids
        leaf_ids = torch.cat([ids[:P], ids[P + start : P + end], ids[P + C :]])
        n_ctx = end - start
        positions = torch.cat(
            [
                torch.arange(P + n_ctx),
                torch.arange(P + plan.nominal_leaf, P + plan.nominal_leaf + S),
            ]
        ).to(self.parts.embed_device)
        origin = torch.cat([torch.arange(P), torch.arange(P + start, P + end), torch.arange(P + C, P + C + S)])
        hidden = compat.embed(self.parts, leaf_ids)
        return ChunkState(hidden, positions, (), P, S, origin.to(self.parts.embed_device))

    def leaf(self, node: Node) -> ChunkState:
        """The leaf's state after its layers [node.layer_start, node.layer_end) and its pruning."""
        return self.run_layers(self.leaf_input(node), node)

    def run(self, node: Node) -> ChunkState:
        """The state of ``node`` after its layers and pruning, children first (depth-first)."""
        if node.left is None or node.right is None:
            return self.leaf(node)
        left = self.run(node.left)
        self.waiting.append(left)
        right = self.run(node.right)
        self.waiting.pop()
        state = merge(left, right)
        del left, right
        return self.run_layers(state, node)

    def note_live(self, state: ChunkState) -> None:
        """Track the peak of live K/V: this node's plus the finished left siblings waiting."""
        live = state.kv_bytes() + sum(s.kv_bytes() for s in self.waiting)
        self.peak_kv = max(self.peak_kv, live)

    def finish(self, start: float) -> CompressedContext:
        """Run the whole tree and package the root as the compressed context (``start``: perf_counter).

        With ``reread_suffix`` and more than one leaf, the root's suffix (the mean of every leaf's
        copy) is replaced by the suffix read afresh after the pruned cache (see :func:`reread_suffix`).
        """
        plan = self.plan
        root = self.run(plan.root)
        kv, logits = root.kv, compat.final_logits(self.parts, root.hidden[:, -1:])
        if self.reread and plan.num_leaves > 1 and plan.suffix_len > 0:
            S = plan.suffix_len
            kv, logits = append_tokens(self.parts, drop_last(kv, S), self.ids[-S:], plan.next_position - S)
        stats = CompressionStats(
            input_tokens=plan.prefix_len + plan.context_len + plan.suffix_len,
            cache_tokens=root.length,
            tree_height=plan.height,
            num_leaves=plan.num_leaves,
            peak_kv_bytes=self.peak_kv,
            seconds=time.perf_counter() - start,
        )
        logger.debug("HOMER pass: %s", stats)
        return CompressedContext(kv, plan.next_position, logits, stats, root.origin)

    def run_layers(self, state: ChunkState, node: Node) -> ChunkState:
        parts = self.parts
        mask = self.node_mask(state, node)
        pos_emb = compat.position_embeddings(parts, state.hidden, state.positions)
        last = node.layer_end - 1
        hidden_last = None
        for index in range(node.layer_start, node.layer_end):
            hidden_in = state.hidden[:, -1:]
            if index == last:
                hidden_last = hidden_in
            hidden, kv = compat.run_layer(parts, index, state.hidden, pos_emb, mask)
            self.observe(node, index, hidden_in, kv, state, pos_emb)
            state = state.with_layer(hidden, kv)
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)
        self.note_live(state)
        return self.prune_node(state, node, hidden_last, pos_emb)

    def node_mask(self, state: ChunkState, node: Node) -> torch.Tensor | None:
        """The attention mask of ``node``'s layers over ``state``'s tokens.

        Causal in sequence order (HOMER as published). With ``own_leaf``, in a merged node a
        context token attends only to the prefix and to the surviving tokens of its own leaf; the
        suffix still attends to everything before it. Why: after a merge the right child's tokens
        follow the left child's, which carry the same position ids, and read them; on the default
        model the answers were much worse when the needle sat in a right child (``docs/method.md``).
        """
        parts, n = self.parts, state.length
        if not self.own_leaf or node.is_leaf:
            return compat.attention_mask(parts, n, 0, state.hidden.dtype, state.hidden.device)
        if state.origin is None:
            raise RuntimeError("own-leaf merge attention needs the tokens' origins (ChunkState.origin)")
        owner = token_owners(self.plan, state.origin.to(state.hidden.device))
        return compat.owner_mask(parts, owner, state.hidden.dtype)

    def observe(
        self, node: Node, index: int, hidden_last: torch.Tensor, kv: compat.KV, state: ChunkState, pos_emb: compat.KV
    ) -> None:
        """Called after each layer pass of every node; does nothing here (an extension point for probes).

        ``hidden_last``: [1, 1, hidden] the last (suffix) token's input to layer ``index``; ``kv``: that
        layer's (K, V) for all of ``state``'s tokens; ``state``: the node before the layer.
        """

    def prune_node(self, state: ChunkState, node: Node, hidden_last: torch.Tensor, pos_emb: compat.KV) -> ChunkState:
        """Cut ``state`` (after ``node``'s last layer) to the node's target length."""
        if node.keep_ctx >= state.context_len:
            return state
        scores = self.scores(state, node.layer_end - 1, hidden_last, pos_emb)
        tiebreak = None
        if self.spans is not None and state.origin is not None and self.random_generator is None:
            # a word survives or goes whole; within the one word cut at the boundary, its own
            # best tokens stay
            tiebreak = scores
            scores = pool_by_span(scores, self.spans.to(state.origin.device)[state.origin])
        keep = keep_indices(scores, state.prefix_len, state.suffix_len, node.keep_ctx, tiebreak)
        return prune(state, keep)

    def scores(self, state: ChunkState, layer: int, hidden_last: torch.Tensor, pos_emb: compat.KV) -> torch.Tensor:
        if self.random_generator is not None:
            return random_scores(state.length, self.random_generator)
        parts = self.parts
        cos, sin = pos_emb
        query = compat.last_query(parts, layer, hidden_last, (cos[:, -1:], sin[:, -1:]))
        keys = state.kv[layer][0]
        logits = last_query_logits(query, keys, compat.attention_scaling(parts, layer))
        bias_row = None if self.bias is None else self.bias[layer]
        # The last token of every node is the last suffix token: its id is known without a host sync.
        query_position = self.plan.next_position - 1
        return calibrated_scores(logits, state.positions, query_position, bias_row)


def token_owners(plan: Plan, origin: torch.Tensor) -> torch.Tensor:
    """Leaf index of every token from its prompt index ([n] long -> [n] long): -1 prefix, -2 suffix."""
    P, C = plan.prefix_len, plan.context_len
    ends = torch.tensor([hi for _, hi in plan.leaf_ranges()], dtype=torch.long, device=origin.device)
    leaf = torch.searchsorted(ends, origin - P, right=True)
    return torch.where(origin < P, -1, torch.where(origin >= P + C, -2, leaf))


def drop_last(kv: tuple[compat.KV, ...], n: int) -> tuple[compat.KV, ...]:
    """Per-layer (K, V) without their last ``n`` tokens (views, no copy)."""
    return tuple((k[:, :, :-n], v[:, :, :-n]) for k, v in kv)


@torch.inference_mode()
def append_tokens(
    parts: compat.ModelParts, kv: tuple[compat.KV, ...], ids: torch.Tensor, start_position: int
) -> tuple[tuple[compat.KV, ...], torch.Tensor]:
    """Run ``ids`` ([n] long) through every layer after the cached ``kv`` ([1, n_kv, F, d] each).

    The new tokens take position ids ``start_position .. start_position + n - 1`` and attend
    causally to all F cached tokens. Returns the K/V with them appended ([1, n_kv, F + n, d]; the
    input tensors are not modified) and the [vocab] float32 logits of the last new token.
    """
    n = int(ids.numel())
    cache = compat.cache_from_kv(kv)
    hidden = compat.embed(parts, ids)
    positions = torch.arange(start_position, start_position + n)
    pos_emb = compat.position_embeddings(parts, hidden, positions)
    mask = compat.attention_mask(parts, n, int(kv[0][0].shape[2]), hidden.dtype, hidden.device)
    for index in range(parts.num_layers):
        hidden, _ = compat.run_layer(parts, index, hidden, pos_emb, mask, past=cache)
    return tuple(compat.kv_from_cache(cache)), compat.final_logits(parts, hidden[:, -1:])


def reread_suffix(
    parts: compat.ModelParts, context: CompressedContext, suffix: list[int] | tuple[int, ...] | torch.Tensor
) -> CompressedContext:
    """``context`` (a merged root ending with ``suffix``) with its suffix read afresh.

    At the root of HOMER's tree the suffix's states are the mean of every leaf's copy (HOMER.md
    9), most of which never saw the part of the document that matters. This drops those
    ``len(suffix)`` cache entries and runs the suffix again through every layer, at the same
    position ids, attending to the pruned prefix + context; logits come from that fresh pass.
    Pruning is unchanged (it was chosen with the question). ``context`` is untouched.
    """
    ids = torch.as_tensor(suffix, dtype=torch.long)
    n = int(ids.numel())
    if n == 0:
        return context
    if n >= context.cache_tokens:
        raise ValueError(f"a suffix of {n} tokens does not fit a cache of {context.cache_tokens}")
    kv, logits = append_tokens(parts, drop_last(context.kv, n), ids, context.next_position - n)
    return CompressedContext(kv, context.next_position, logits, context.stats, context.kept)


@torch.inference_mode()
def compress(
    parts: compat.ModelParts,
    plan: Plan,
    ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    random_generator: torch.Generator | None = None,
    progress: Progress | None = None,
    spans: torch.Tensor | None = None,
    reread_suffix: bool = False,
    own_leaf: bool = False,
) -> CompressedContext:
    """Run HOMER over ``ids`` ([P + C + S] long, prefix + context + suffix) following ``plan``.

    Args:
        bias: [L, M] calibration table, or None for uncalibrated significance.
        random_generator: if given, prune at random (the ablation) instead of by significance.
        progress: progress(done, total) after each layer pass.
        spans: [P + C + S] word-span ids (``homer_llm.spans.word_spans``): prune whole words.
        reread_suffix: with more than one leaf, replace the root's averaged suffix by the suffix
            read afresh after the pruned cache (:func:`reread_suffix`); False is HOMER as published.
        own_leaf: in merged nodes, context tokens attend only to the prefix and their own leaf
            (:meth:`TreePass.node_mask`); False is HOMER as published.
    """
    if ids.dim() != 1:
        raise ValueError(f"HOMER runs batch 1: expected a 1-D id tensor, got shape {tuple(ids.shape)}")
    expected = plan.prefix_len + plan.context_len + plan.suffix_len
    if ids.numel() != expected:
        raise ValueError(f"plan is for {expected} tokens, got {ids.numel()}")
    start = time.perf_counter()
    return TreePass(parts, plan, ids, bias, random_generator, progress, spans, reread_suffix,
                    own_leaf).finish(start)
