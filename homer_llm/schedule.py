"""The HOMER plan: chunking, tree shape, per-node layer ranges and target lengths.

Pure Python, no tensors: everything here is decided from token counts alone (HOMER.md sections
3, 5 and 7), so it can be property-tested over many shapes and printed before any compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    """One node of the merge tree.

    Attributes:
        level: 0 for leaves, H for the root.
        leaf_start, leaf_end: the leaves [leaf_start, leaf_end) this node covers.
        layer_start, layer_end: decoder layers [layer_start, layer_end) this node runs.
        natural_ctx: context tokens entering this node if nothing had been pruned below it.
        keep_ctx: context tokens this node keeps after pruning at its last layer.
        left, right: children (None for a leaf).
    """

    level: int
    leaf_start: int
    leaf_end: int
    layer_start: int
    layer_end: int
    natural_ctx: int
    keep_ctx: int
    left: Node | None = None
    right: Node | None = None

    @property
    def is_leaf(self) -> bool:
        return self.left is None


@dataclass(frozen=True)
class Plan:
    """The whole schedule for one prompt.

    Attributes:
        prefix_len, context_len, suffix_len: P, C, S.
        chunk_len, cache_len: M, T.
        num_layers, warmup_layers: L and the W actually used.
        height: H; num_leaves: N = 2**H.
        leaf_sizes: context tokens per leaf (differ by at most one, larger first).
        nominal_leaf: c = ceil(C / N); suffix position ids start at P + c in every leaf.
        layers_per_level, leftover_layers: Lc and R.
        root: the tree.
    """

    prefix_len: int
    context_len: int
    suffix_len: int
    chunk_len: int
    cache_len: int
    num_layers: int
    warmup_layers: int
    height: int
    num_leaves: int
    leaf_sizes: tuple[int, ...]
    nominal_leaf: int
    layers_per_level: int
    leftover_layers: int
    root: Node

    @property
    def next_position(self) -> int:
        """Position id of the first generated token: last suffix id + 1 (HOMER.md section 4)."""
        return self.prefix_len + self.nominal_leaf + self.suffix_len

    @property
    def layer_passes(self) -> int:
        """Decoder-layer passes of the whole tree (every node's own layers): the progress total."""
        return sum(node.layer_end - node.layer_start for node in self.nodes())

    @property
    def leaf_passes(self) -> int:
        """Decoder-layer passes of the leaves alone (what focus's leaf locator runs)."""
        return sum(node.layer_end - node.layer_start for node in self.nodes() if node.is_leaf)

    @property
    def final_len(self) -> int:
        return self.prefix_len + self.root.keep_ctx + self.suffix_len

    def leaf_ranges(self) -> list[tuple[int, int]]:
        """[start, end) offsets of each leaf inside the context."""
        out, start = [], 0
        for size in self.leaf_sizes:
            out.append((start, start + size))
            start += size
        return out

    def nodes(self) -> list[Node]:
        """All nodes in depth-first post-order (the order they are computed)."""
        out: list[Node] = []

        def walk(node: Node) -> None:
            if node.left is not None and node.right is not None:
                walk(node.left)
                walk(node.right)
            out.append(node)

        walk(self.root)
        return out


MAX_LEAVES = 1 << 16
"""Most leaves of one plan (65,536: 8.4M tokens at chunk_len 128, 268M at 4,096)."""


def default_warmup(num_layers: int) -> int:
    """W scaled from the paper's 12 of 32 layers."""
    return round(12 * num_layers / 32)


def leaf_sizes(context_len: int, num_leaves: int) -> tuple[int, ...]:
    """Split C tokens over N leaves as evenly as possible, larger leaves first.

    An even split (sizes differ by at most one) never leaves an empty leaf when C >= N, which the
    ceil-then-remainder split of the official code can do for short inputs.
    """
    base, extra = divmod(context_len, num_leaves)
    return tuple(base + (1 if i < extra else 0) for i in range(num_leaves))


def make_plan(
    prefix_len: int,
    context_len: int,
    suffix_len: int,
    *,
    chunk_len: int,
    cache_len: int,
    num_layers: int,
    warmup_layers: int | None = None,
) -> Plan:
    """Build the HOMER plan for a prompt of P + C + S tokens.

    Raises:
        ValueError: if the affixes leave too little room in a chunk, the cache cannot hold the
            affixes, or the document is so long that the tree is taller than the model has layers.
    """
    P, C, S, M, T, L = prefix_len, context_len, suffix_len, chunk_len, cache_len, num_layers
    if P < 0 or C < 0 or S < 1:
        raise ValueError(f"need P >= 0, C >= 0, S >= 1 tokens, got P={P}, C={C}, S={S}")
    if L < 1:
        raise ValueError(f"model must have at least one layer, got {L}")
    E = M - P - S
    if E < 4:
        raise ValueError(
            f"prefix ({P} tokens) and suffix ({S} tokens) leave {E} context tokens in a chunk of "
            f"{M}; shorten the instruction or question, or raise chunk_len"
        )
    if T < P + S + 1:
        raise ValueError(f"cache_len {T} cannot hold prefix {P} + suffix {S} + one context token")
    T = min(T, M)
    n0 = max(1, math.ceil(C / E))
    H = math.ceil(math.log2(n0)) if n0 > 1 else 0
    N = 2**H
    if H + 1 > L:
        raise ValueError(
            f"a document of {C} tokens needs a merge tree of height {H}, more than this "
            f"{L}-layer model supports with chunk_len={M}; raise chunk_len or shorten the document"
        )
    if N > MAX_LEAVES:  # before any per-leaf work: a plan for 10**9 tokens is refused, not built
        raise ValueError(
            f"a document of {C} tokens needs {N} leaves of at most {E} tokens, more than the {MAX_LEAVES} "
            "a plan may have; raise chunk_len or shorten the document"
        )
    W = default_warmup(L) if warmup_layers is None else warmup_layers
    W = min(W, L - (H + 1))  # every level needs at least one layer
    Lc = (L - W) // (H + 1)
    R = (L - W) - Lc * (H + 1)
    sizes = leaf_sizes(C, N)
    nominal = math.ceil(C / N) if C else 0
    tau = E // 2
    root_keep = T - P - S

    def layers(level: int) -> tuple[int, int]:
        if level == 0:
            return 0, W + R + Lc
        return W + R + level * Lc, W + R + (level + 1) * Lc

    def build(level: int, start: int, end: int, keep: int | None) -> Node:
        natural = sum(sizes[start:end])
        a, b = layers(level)
        if level == 0:
            return Node(level, start, end, a, b, natural, min(natural, keep if keep is not None else natural))
        mid = (start + end) // 2
        nat_left, nat_right = sum(sizes[start:mid]), sum(sizes[mid:end])
        # The right child is cut to tau; the left one takes what the right leaves of the E slots,
        # so two siblings always fill at most one chunk (HOMER.md section 7).
        keep_right = min(nat_right, tau)
        keep_left = min(nat_left, E - keep_right)
        left = build(level - 1, start, mid, keep_left)
        right = build(level - 1, mid, end, keep_right)
        own_keep = natural if keep is None else min(natural, keep)
        return Node(level, start, end, a, b, natural, own_keep, left, right)

    root = build(H, 0, N, root_keep)
    return Plan(P, C, S, M, T, L, W, H, N, sizes, nominal, Lc, R, root)
