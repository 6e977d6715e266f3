"""Work and memory of a HOMER plan, computed from token counts alone (no model, no tensors).

These predict what the engine will do at lengths no machine here can run (a 7B model at 1M
tokens), and are checked against the engine's own accounting on small models in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schedule import Node, Plan


@dataclass(frozen=True)
class PlanCost:
    """What a plan asks of the engine, replayed from token counts.

    Attributes:
        length: P + C + S.
        height, leaves, nodes: tree shape.
        layer_calls: decoder-layer calls (each a fixed number of kernel launches).
        prunes: nodes that prune (each scores its tokens once with the last query).
        token_layers: tokens x layers run (a dense prefill runs length x layers).
        work_fraction: token_layers / (length x layers).
        kv_peak_bytes: the engine's CompressionStats.peak_kv_bytes (see replay).
        node_tokens: (tokens, layers) of every node in the order the engine runs them: the
            tokens a node's layers see (after its children's pruning) and how many layers it runs.
    """

    length: int
    height: int
    leaves: int
    nodes: int
    layer_calls: int
    prunes: int
    token_layers: int
    work_fraction: float
    kv_peak_bytes: int
    node_tokens: tuple[tuple[int, int], ...] = ()


def plan_cost(plan: Plan, bytes_per_token_layer: int = 0) -> PlanCost:
    """Replay engine.TreePass over ``plan`` with token counts instead of tensors.

    Depth-first: a finished (pruned) left sibling waits while its right sibling is computed. After
    a node's layers the live K/V is the node's cache (its tokens x every layer from 0 to the node's
    last) plus every waiting sibling's; the node then prunes to ``keep_ctx`` context tokens if it
    holds more. Merging two children of n_l and n_r tokens gives n_l + n_r - P - S tokens.

    Args:
        bytes_per_token_layer: K and V bytes of one token in one layer (2 x n_kv x d x element size).
    """
    P, S = plan.prefix_len, plan.suffix_len
    waiting: list[int] = []
    totals = {"peak": 0, "token_layers": 0, "prunes": 0, "layer_calls": 0, "nodes": 0}
    sizes: list[tuple[int, int]] = []

    def run(node: Node) -> int:
        if node.left is None or node.right is None:
            n = P + node.natural_ctx + S
        else:
            n_left = run(node.left)
            waiting.append(n_left * node.left.layer_end * bytes_per_token_layer)
            n_right = run(node.right)
            waiting.pop()
            n = n_left + n_right - P - S
        layers = node.layer_end - node.layer_start
        totals["nodes"] += 1
        sizes.append((n, layers))
        totals["layer_calls"] += layers
        totals["token_layers"] += n * layers
        totals["peak"] = max(totals["peak"], n * node.layer_end * bytes_per_token_layer + sum(waiting))
        if node.keep_ctx >= n - P - S:
            return n
        totals["prunes"] += 1
        return P + node.keep_ctx + S

    run(plan.root)
    length = P + plan.context_len + S
    return PlanCost(
        length=length, height=plan.height, leaves=plan.num_leaves, nodes=totals["nodes"],
        layer_calls=totals["layer_calls"], prunes=totals["prunes"], token_layers=totals["token_layers"],
        work_fraction=totals["token_layers"] / (length * plan.num_layers), kv_peak_bytes=totals["peak"],
        node_tokens=tuple(sizes),
    )


@dataclass(frozen=True)
class LayerFlops:
    """Matmul FLOPs of one decoder layer, from its shape.

    Attributes:
        linear_params: weights of the layer's matrix products (q, k, v, o projections and the MLP);
            every token multiplies through each once (2 FLOPs per weight).
        attn_width: query heads x head dim; every (query, key) pair costs 2 x attn_width FLOPs for
            the scores and 2 x attn_width for the weighted sum of values.
    """

    linear_params: int
    attn_width: int

    def __call__(self, tokens: int, past: int = 0) -> int:
        """FLOPs of ``tokens`` new tokens through the layer, attending causally after ``past`` cached ones."""
        pairs = tokens * past + tokens * (tokens + 1) // 2
        return 2 * tokens * self.linear_params + 4 * self.attn_width * pairs


def layer_flops(model) -> LayerFlops:
    """The :class:`LayerFlops` of ``model``'s first decoder layer (every layer has the same shape)."""
    import torch

    layer = model.model.layers[0]
    linear = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return LayerFlops(linear, config.num_attention_heads * head_dim)


@dataclass(frozen=True)
class OwnWork:
    """The matmul work one method does for one prompt (what its FLOP floor is counted from).

    Attributes:
        flops: matmul FLOPs of the decoder layers it runs (projections, causal attention over the
            tokens each pass sees, MLP). Not counted: embeddings, norms, rotary, the significance
            scores (one query per prune) and the lm_head of the last token, all far below 1 %.
        token_layers: tokens x layers run.
    """

    flops: int
    token_layers: int


def plain_work(length: int, num_layers: int, flops: LayerFlops) -> OwnWork:
    """A dense causal prefill of ``length`` tokens through every layer."""
    return OwnWork(num_layers * flops(length), num_layers * length)


def tree_work(plan: Plan, flops: LayerFlops, reread_suffix: bool) -> OwnWork:
    """HOMER's tree: every node's layers over its tokens (the replay of :func:`plan_cost`), and, with
    ``reread_suffix`` and more than one leaf, the suffix read again over every layer after the cache.

    Causal pairs are counted for own-leaf merges too: its mask allows fewer pairs, but a kernel that
    takes a dense mask computes them all, so the floor does not assume the saving.
    """
    cost = plan_cost(plan)
    total = sum(layers * flops(n) for n, layers in cost.node_tokens)
    token_layers = cost.token_layers
    S = plan.suffix_len
    if reread_suffix and plan.num_leaves > 1 and S > 0:
        final = cost.node_tokens[-1][0]  # the root, unpruned (it keeps at most the cache)
        cache = min(final, plan.prefix_len + plan.root.keep_ctx + S)
        total += plan.num_layers * flops(S, cache - S)
        token_layers += plan.num_layers * S
    return OwnWork(total, token_layers)


def focus_work(plan: Plan, flops: LayerFlops, read_tokens: int) -> OwnWork:
    """Focus with the leaf locator: every leaf's own layers, unpruned and unmerged, then a plain
    read of the ``read_tokens`` chosen (prefix + chosen text + suffix) through every layer."""
    P, S = plan.prefix_len, plan.suffix_len
    leaves = [n for n in plan.nodes() if n.is_leaf]
    total = sum((n.layer_end - n.layer_start) * flops(P + n.natural_ctx + S) for n in leaves)
    token_layers = sum((n.layer_end - n.layer_start) * (P + n.natural_ctx + S) for n in leaves)
    read = plain_work(read_tokens, plan.num_layers, flops)
    return OwnWork(total + read.flops, token_layers + read.token_layers)
